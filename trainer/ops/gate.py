"""The rollout gate's decision: both versions answer the same sentences, and each rule is decided
on a confidence bound of the accuracy difference, not on two point estimates.

Two kinds of evidence:
- paired: labelled holdout sentences, the paired difference's interval (pairing removes the
  sentences both versions get right or wrong);
- disagreement: where two versions give the same answer their accuracy is the same, so the
  change is the mean over texts of (new right) - (old right), which is 0 wherever they agree.
  Many UNLABELLED texts fix where that is (and the share alone bounds the change: |change| <=
  share, so a small enough share proves an old-domain rule without a label); labels are only
  needed on disagreements, and a random sample of them, weighted by its inverse sampling rate,
  estimates the rest (active testing, Kossen et al. ICML 2021: spend labels where the
  decision is made).
A rule the evidence cannot settle is INCONCLUSIVE (the default stays), with what would settle it.
"""

import math
from collections.abc import Sequence
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
    """new - old accuracy over `texts` texts, from where the versions disagree. Two looks, each
    at 1 - (1 - confidence) / 2 (Bonferroni), so their intersection holds at `confidence`:
    counts alone and, with enough labels, the weighted paired mean. Counts alone: the change
    is at most the share of disagreements and at least minus the share of negative flips (old
    right, new wrong), which is at most the share of disagreements not known by a label to be
    anything else. That count only falls as labels arrive, so its bound holds whenever it is
    taken (it dominates the bound on the true count of negative flips)."""
    texts: int  # texts both versions answered
    disagree: int
    labelled: int  # labelled disagreements
    share: float
    share_low: float
    share_high: float
    cleared: int  # disagreements a label shows are not negative flips
    flips_high: float  # bound on the share of negative flips
    change: float | None  # estimated new - old accuracy (None: too few labels)
    sd: float | None  # of the per-text weighted difference
    low: float
    high: float


def disagreement(texts: int, disagree: int, diffs: Sequence[int], weights: Sequence[float],
                 confidence: float, min_labelled: int = MIN_LABELLED,
                 cleared: int | None = None) -> Disagreement:
    """`diffs`: (new right) - (old right), -1, 0 or 1, of each labelled disagreement, and
    `weights` its inverse chance of having been labelled (1 where every disagreement of its
    part has a label; M/m where m of M were labelled at random). The weighted per-text mean is
    an unbiased estimate of the change (active testing's importance weights); with fewer than
    `min_labelled` labels only the counts decide. `cleared`: labelled disagreements that are
    not negative flips (default: those among `diffs`; any label counts, random or not)."""
    cleared = sum(d >= 0 for d in diffs) if cleared is None else cleared
    if not (0 <= disagree <= texts and texts >= 1 and len(diffs) == len(weights) <= disagree
            and all(d in (-1, 0, 1) for d in diffs) and all(w >= 1 for w in weights)
            and 0 <= cleared <= disagree):
        raise ValueError(f"inconsistent evidence: texts={texts} disagree={disagree} "
                         f"labelled={len(diffs)} weights={len(weights)} cleared={cleared}")
    each = 1 - (1 - confidence) / 2
    s_low, s_high = clopper_pearson(disagree, texts, each)
    flips_high = clopper_pearson(disagree - cleared, texts, each)[1]
    low, high, change, sd = -flips_high, s_high, None, None
    if len(diffs) >= min_labelled:
        z = [d * w for d, w in zip(diffs, weights)]
        change = sum(z) / texts
        sd = math.sqrt(max(0.0, sum(x * x for x in z) / texts - change * change))
        half = float(norm.ppf(each)) * sd / math.sqrt(texts)
        low, high = max(low, change - half), min(high, change + half)
    return Disagreement(texts, disagree, len(diffs), disagree / texts, s_low, s_high, cleared,
                        flips_high, change, sd, low, high)


def texts_for_counts(d: Disagreement, margin: float, confidence: float) -> int | None:
    """Texts at which the count of possible negative flips, at its present rate, would bound
    the loss within `margin` (None: the rate is at or above it, or it takes over 100 times the
    texts at hand)."""
    k, each = d.disagree - d.cleared, 1 - (1 - confidence) / 2
    if k / d.texts >= margin:
        return None
    lo, hi = d.texts, 100 * d.texts
    if clopper_pearson(round(k * hi / d.texts), hi, each)[1] > margin:
        return None
    while hi - lo > max(1, lo // 100):
        mid = (lo + hi) // 2
        lo, hi = ((lo, mid) if clopper_pearson(round(k * mid / d.texts), mid, each)[1] <= margin
                  else (mid, hi))
    return hi


def texts_to_settle(d: Disagreement, margin: float, confidence: float) -> int | None:
    """Texts (all their disagreements labelled) at which an estimate of this spread would clear
    -margin; None when the estimate sits at or below it (or so close that no realistic number,
    over 100 times the texts at hand, would)."""
    if d.change is None or d.sd is None or d.change <= -margin:
        return None
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    n = max(d.texts, math.ceil((z * d.sd / (d.change + margin)) ** 2))
    return n if n <= 100 * d.texts else None


def not_worse_by_disagreement(d: Disagreement, margin: float) -> str:
    """An old domain on disagreement evidence: the same rule as `not_worse`."""
    if d.low >= -margin:
        return PASS
    return FAIL if d.high < -margin else INCONCLUSIVE
