"""How many old answers an update changes: disagreement, negative and positive flips.

Accuracy can stay level while many answers move (some fixed, as many broken): users see each
broken answer as a regression. Negative flip rate = share of texts the old version got right and
the new one gets wrong (Xie et al., ACL 2021, "Regression Bugs Are In Your Model!").
"""

from collections.abc import Mapping, Sequence
from typing import Any

from trainer.data.sources import Example


def churn(old: Sequence[Any], new: Sequence[Any], truth: Sequence[Any] | None = None
          ) -> dict[str, Any]:
    """Rates over the same texts in the same order. Without `truth` (unlabelled text) only the
    disagreement rate is defined."""
    if len(old) != len(new) or (truth is not None and len(truth) != len(old)):
        raise ValueError(f"churn needs answers for the same texts, got {len(old)} old, "
                         f"{len(new)} new and {len(truth) if truth is not None else '-'} labels")
    n = len(old)
    out: dict[str, Any] = {"n": n, "disagreement": _share(sum(a != b for a, b in zip(old, new)), n)}
    if truth is not None:
        out["negative_flip_rate"] = _share(sum(a == t != b for a, b, t in zip(old, new, truth)), n)
        out["positive_flip_rate"] = _share(sum(b == t != a for a, b, t in zip(old, new, truth)), n)
    return out


def _share(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


def churn_by_domain(before: Mapping[str, Sequence[int]], after: Mapping[str, Sequence[int]],
                    tests: Mapping[str, Sequence[Example]], labels: Sequence[str],
                    before_unlabelled: Mapping[str, Sequence[int]] | None = None,
                    after_unlabelled: Mapping[str, Sequence[int]] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Per domain of `before`: churn on its labelled test split ("test") and, where given, the
    disagreement on its unlabelled held-out texts ("unlabelled")."""
    out = {}
    for d in before:
        truth = [labels.index(ex.label) for ex in tests[d]]
        out[d] = {"test": churn(before[d], after[d], truth)}
        if before_unlabelled and d in before_unlabelled and after_unlabelled:
            out[d]["unlabelled"] = churn(before_unlabelled[d], after_unlabelled[d])
    return out
