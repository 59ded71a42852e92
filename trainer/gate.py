"""The rollout gate's decision: both versions answer the same holdout sentences, and each rule is
decided on the paired accuracy difference's confidence interval, not on two point estimates.

On a few hundred sentences two accuracies differ by several points from sampling alone; pairing
removes the sentences both versions get right or wrong, and the interval says whether the
holdout can tell at all. A rule the holdout cannot settle is INCONCLUSIVE (the default stays),
with the holdout size that would settle it.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy.stats import norm

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
