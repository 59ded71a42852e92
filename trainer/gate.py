"""The rollout gate's decision: both versions answer the same sentences, and each rule is decided
on a confidence bound of the accuracy difference, not on two point estimates.

Two kinds of evidence:
- paired: labelled holdout sentences, the paired difference's interval (pairing removes the
  sentences both versions get right or wrong);
- disagreement: where two versions give the same answer their accuracy is the same, so the
  change is share(disagree) x (P(new right | disagree) - P(old right | disagree)). The share
  comes from many UNLABELLED texts, the conditional from labels on disagreements only (active
  testing: spend labels where the decision is made). With no labels the conditional is only
  known to lie in [-1, 1], so a small enough share proves an old-domain rule by itself.
A rule the evidence cannot settle is INCONCLUSIVE (the default stays), with what would settle it.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import beta, norm

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"


@dataclass
class Paired:
    """new - old accuracy on the same n sentences; `low` and `high` are one-sided bounds at the
    gate's confidence (together a 2c - 1 two-sided interval)."""
    n: int
    old: float
    new: float
    diff: float
    low: float
    high: float
    sd: float  # of the per-sentence difference (-1, 0 or 1)


def paired(old: Sequence[bool], new: Sequence[bool], confidence: float) -> Paired:
    """Wald interval of the mean paired difference (McNemar's setting: only the sentences the
    versions disagree on carry information). Identical answers give a zero-width interval."""
    if len(old) != len(new) or not old:
        raise ValueError(f"paired answers need equal, non-zero lengths, got {len(old)} and {len(new)}")
    n = len(old)
    d = [int(b) - int(a) for a, b in zip(old, new)]
    mean = sum(d) / n
    sd = math.sqrt(max(0.0, sum(x * x for x in d) / n - mean * mean))
    half = float(norm.ppf(confidence)) * sd / math.sqrt(n)
    return Paired(n, sum(old) / n, sum(new) / n, mean, mean - half, mean + half, sd)


def needed(p: Paired, bound: float, confidence: float) -> int | None:
    """Holdout sentences at which an interval of this spread would clear `bound` (None: the
    difference sits on the bound, no size settles it)."""
    gap = abs(p.diff - bound)
    if gap < 1e-9 or p.sd == 0:
        return None
    return math.ceil((norm.ppf(confidence) * p.sd / gap) ** 2)


def not_worse(p: Paired, margin: float) -> str:
    """An old domain: the new version loses at most `margin` (non-inferiority)."""
    if p.low >= -margin:
        return PASS
    return FAIL if p.high < -margin else INCONCLUSIVE


def better(p: Paired, gain: float) -> str:
    """The new domain: the new version beats the default by more than `gain`."""
    if p.low > gain:
        return PASS
    return FAIL if p.high <= gain else INCONCLUSIVE


def verdict(outcomes: Sequence[str]) -> str:
    """FAIL if any rule fails, else INCONCLUSIVE if any is, else PASS."""
    if FAIL in outcomes:
        return FAIL
    return INCONCLUSIVE if INCONCLUSIVE in outcomes else PASS


def accuracy_rules(old: Mapping[str, Sequence[bool]], new: Mapping[str, Sequence[bool]],
                   new_domain: str, confidence: float, max_old_drop: float,
                   min_new_gain: float) -> dict[str, tuple[str, Paired, float]]:
    """Per domain: (outcome, paired difference, the bound it was held to). The new domain must
    be better by more than `min_new_gain`; every other loses at most `max_old_drop`."""
    rules = {}
    for domain in new:
        p = paired(old[domain], new[domain], confidence)
        if domain == new_domain:
            rules[domain] = (better(p, min_new_gain), p, min_new_gain)
        else:
            rules[domain] = (not_worse(p, max_old_drop), p, -max_old_drop)
    return rules


MIN_LABELLED = 20  # labelled disagreements before their mean is bounded (normal approximation)


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact one-sided bounds on a binomial share, each holding at `confidence`."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    low = 0.0 if k == 0 else float(beta.ppf(1 - confidence, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(confidence, k + 1, n - k))
    return low, high


@dataclass
class Disagreement:
    """new - old accuracy bounded from unlabelled texts and labelled disagreements. Each of the
    two estimates is bounded at 1 - (1 - confidence) / 2 (Bonferroni), so `low` and `high` hold
    together at `confidence` whatever the labels say."""
    texts: int  # texts both versions answered
    disagree: int
    labelled: int  # labelled disagreements
    share: float
    share_low: float
    share_high: float
    delta: float | None  # mean of (new right) - (old right) on labelled disagreements
    delta_low: float  # -1 without enough labels
    delta_high: float  # +1 without enough labels
    sd: float | None  # of the per-disagreement difference, where labels bound it
    low: float
    high: float


def disagreement(texts: int, disagree: int, new_right: int, old_right: int, labelled: int,
                 confidence: float, min_labelled: int = MIN_LABELLED) -> Disagreement:
    """`new_right`/`old_right` count the labelled disagreements each version answers right (at
    most one of them can be right on a disagreement). Fewer than `min_labelled` labels leave
    the conditional unbounded ([-1, 1]): then only a small share can decide."""
    if not (0 <= disagree <= texts and texts >= 1 and 0 <= labelled <= disagree
            and new_right >= 0 and old_right >= 0 and new_right + old_right <= labelled):
        raise ValueError(f"inconsistent counts: texts={texts} disagree={disagree} "
                         f"labelled={labelled} new_right={new_right} old_right={old_right}")
    each = 1 - (1 - confidence) / 2
    s_low, s_high = clopper_pearson(disagree, texts, each)
    delta, d_low, d_high, sd = None, -1.0, 1.0, None
    if labelled:
        delta = (new_right - old_right) / labelled
    if labelled >= min_labelled and delta is not None:
        second = (new_right + old_right) / labelled
        sd = math.sqrt(max(0.0, second - delta * delta))
        half = float(norm.ppf(each)) * sd / math.sqrt(labelled)
        d_low, d_high = max(-1.0, delta - half), min(1.0, delta + half)
    # s * d is increasing in s when d >= 0 and decreasing when d < 0.
    low = (s_low if d_low >= 0 else s_high) * d_low
    high = (s_high if d_high >= 0 else s_low) * d_high
    return Disagreement(texts, disagree, labelled, disagree / texts, s_low, s_high, delta,
                        d_low, d_high, sd, low, high)


def labels_to_settle(d: Disagreement, margin: float, confidence: float) -> int | None:
    """Labelled disagreements at which an estimate like this one would clear -margin (None:
    more than the texts disagree on, or no number at all: more unlabelled texts are needed).
    With no labels yet the guess is a conditional of 0 with the widest spread."""
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    delta = d.delta if d.delta is not None else 0.0
    sd = d.sd if d.sd is not None else 1.0
    gap = delta + margin / max(d.share_high, 1e-12)  # how far delta sits above what must hold
    if gap <= 0:
        return None
    n = max(MIN_LABELLED, math.ceil((z * sd / gap) ** 2))
    return n if n <= d.disagree else None


def not_worse_by_disagreement(d: Disagreement, margin: float) -> str:
    """An old domain on disagreement evidence: the same rule as `not_worse`."""
    if d.low >= -margin:
        return PASS
    return FAIL if d.high < -margin else INCONCLUSIVE
