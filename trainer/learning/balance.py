"""Class balancing: Cui et al. 2019 effective-number weights and a (domain, class)-balanced sampler."""

import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import torch
from torch.utils.data import WeightedRandomSampler


def _nonneg_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def _count_list(counts: Sequence[int] | Mapping[int, int], num_classes: int | None) -> list[int]:
    if num_classes is not None and (_nonneg_int("num_classes", num_classes) == 0):
        raise ValueError("num_classes must be at least 1")
    if isinstance(counts, Mapping):
        bad = [c for c in counts if isinstance(c, bool) or not isinstance(c, int) or c < 0]
        if bad:
            raise ValueError(f"counts keys must be class indices (ints >= 0), got {bad}")
        size = num_classes if num_classes is not None else max(counts, default=-1) + 1
        if any(c >= size for c in counts):
            raise ValueError(f"counts has a class index >= num_classes ({size})")
        out = [counts.get(c, 0) for c in range(size)]
    else:
        out = list(counts)
        if num_classes is not None and len(out) != num_classes:
            raise ValueError(f"counts has {len(out)} entries but num_classes is {num_classes}")
    for c, n in enumerate(out):
        _nonneg_int(f"counts[{c}]", n)
    if not out or not any(out):
        raise ValueError("counts must contain at least one class with a positive count")
    return out


def effective_number_weights(counts: Sequence[int] | Mapping[int, int], beta: float,
                             num_classes: int | None = None) -> torch.Tensor:
    """Per-class loss weights w_c ∝ (1 - beta) / (1 - beta**n_c) (Cui et al. 2019), sum = C.

    `counts` are over the whole training set of the step, never one batch, so a class missing
    from a batch keeps a finite weight. A class with count 0 gets the largest weight among the
    present classes (its raw weight would be infinite); beta = 0 gives all ones.
    """
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be a number in [0, 1), got {beta!r}")
    n = _count_list(counts, num_classes)
    log_beta = math.log(beta) if beta > 0 else -math.inf
    # 1 - beta**n_c via expm1 keeps precision for beta close to 1 (e.g. 0.9999).
    raw = [(1.0 - beta) / -math.expm1(c * log_beta) if c > 0 else None for c in n]
    top = max(w for w in raw if w is not None)
    weights = torch.tensor([top if w is None else w for w in raw], dtype=torch.float64)
    return (weights * len(n) / weights.sum()).to(torch.float32)


def class_counts(labels: Sequence[int], num_classes: int) -> list[int]:
    """How many examples each class index 0..num_classes-1 has (zeros included)."""
    if _nonneg_int("num_classes", num_classes) == 0:
        raise ValueError("num_classes must be at least 1")
    bad = [y for y in labels
           if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < num_classes]
    if bad:
        raise ValueError(f"labels must be ints in [0, {num_classes}), got {sorted(set(bad))[:5]}")
    seen = Counter(labels)
    return [seen.get(c, 0) for c in range(num_classes)]


def balanced_sampler_weights(groups: Sequence[Hashable]) -> torch.Tensor:
    """Per-example weights giving every distinct group (e.g. (domain, class)) equal total mass.

    Example i in group g gets 1 / (G * n_g): the weights sum to 1 and each group to 1 / G.
    """
    groups = list(groups)
    if not groups:
        raise ValueError("groups must not be empty")
    sizes = Counter(groups)
    return torch.tensor([1.0 / (len(sizes) * sizes[g]) for g in groups], dtype=torch.float64)


def make_balanced_sampler(groups: Sequence[Hashable], num_samples: int,
                          seed: int) -> WeightedRandomSampler:
    """A with-replacement sampler that draws each group equally often, reproducible by seed."""
    if _nonneg_int("num_samples", num_samples) == 0:
        raise ValueError("num_samples must be at least 1")
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(balanced_sampler_weights(groups), num_samples,
                                 replacement=True, generator=gen)


def deferred_weights(epoch: int, epochs: int, defer_epochs: int,
                     weights: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Deferred re-weighting (Cao et al. 2019, DRW): ones first, `weights` for the last epochs.

    `epoch` counts from 0; epochs [epochs - defer_epochs, epochs) use the weights, so the
    representation is learnt unweighted before the classifier is re-balanced.
    """
    if _nonneg_int("epochs", epochs) == 0:
        raise ValueError("epochs must be at least 1")
    if _nonneg_int("epoch", epoch) >= epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    if _nonneg_int("defer_epochs", defer_epochs) > epochs:
        raise ValueError(f"defer_epochs must be in [0, epochs={epochs}], got {defer_epochs}")
    w = torch.as_tensor(weights, dtype=torch.float32)
    return w if epoch >= epochs - defer_epochs else torch.ones_like(w)
