"""Continual-learning metrics over an accuracy matrix R[i][j] (after step i, on domain j's test split).

Domains are indexed in the order they arrive and step i trains on domain i, so R is T x T and
R[i][j] for j > i measures a domain not trained yet (used by none of these metrics).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

Matrix = Sequence[Sequence[float]] | np.ndarray


def _matrix(R: Matrix) -> np.ndarray:
    """R as a square float64 array; ragged, non-square, empty or non-finite input is an error."""
    rows = [list(row) for row in R]
    if not rows or any(len(row) != len(rows) for row in rows):
        shape = [len(row) for row in rows]
        raise ValueError(f"R must be a non-empty square T x T matrix; got row lengths {shape}")
    out = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ValueError("R must contain only finite accuracies")
    return out


def average_accuracy(R: Matrix) -> float:
    """Mean of the final row over all T domains (all have been seen after the last step)."""
    r = _matrix(R)
    return float(r[-1].mean())


def average_incremental_accuracy(R: Matrix) -> float:
    """Mean over steps i of the mean accuracy on the domains seen so far, R[i][:i+1]."""
    r = _matrix(R)
    return float(np.mean([r[i, : i + 1].mean() for i in range(len(r))]))


def forgetting(R: Matrix) -> float:
    """Chaudhry et al. 2018: mean over old domains j of max_{j<=i<T-1} R[i][j] - R[T-1][j].

    Negative when the final model beats every earlier one on a domain; 0.0 for T = 1.
    """
    r = _matrix(R)
    T = len(r)
    if T == 1:
        return 0.0
    return float(np.mean([r[j : T - 1, j].max() - r[T - 1, j] for j in range(T - 1)]))


def backward_transfer(R: Matrix) -> float:
    """Lopez-Paz & Ranzato 2017: mean over old domains j of R[T-1][j] - R[j][j]; 0.0 for T = 1."""
    r = _matrix(R)
    T = len(r)
    if T == 1:
        return 0.0
    return float(np.mean([r[T - 1, j] - r[j, j] for j in range(T - 1)]))


def worst_drop(R: Matrix) -> float:
    """Largest fall below best-so-far at any step: max over j < i of max_{j<=k<i} R[k][j] - R[i][j].

    Catches forgetting that later steps recovered (invisible in `forgetting`); clamped at 0.
    """
    r = _matrix(R)
    drops = [r[j:i, j].max() - r[i, j] for i in range(len(r)) for j in range(i)]
    return float(max([0.0, *drops]))


def summary(R: Matrix) -> dict[str, float]:
    return {
        "average_accuracy": average_accuracy(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
        "worst_drop": worst_drop(R),
    }


def _labels(y_true: Sequence[int], y_pred: Sequence[int],
            num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 1 or t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D and equally long; "
                         f"got shapes {t.shape} and {p.shape}")
    if not (np.issubdtype(t.dtype, np.integer) and np.issubdtype(p.dtype, np.integer)):
        raise ValueError("y_true and y_pred must hold integer class indices")
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_classes:
            raise ValueError(f"y_true and y_pred must be in [0, {num_classes})")
    return t, p


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = _labels(y_true, y_pred, None)
    return float((t == p).mean())


def _f1_parts(y_true: Sequence[int], y_pred: Sequence[int],
              num_classes: int) -> tuple[list[float], list[bool]]:
    t, p = _labels(y_true, y_pred, num_classes)
    f1s, present = [], []
    for c in range(num_classes):
        tp = int(np.sum((t == c) & (p == c)))
        denom = int(np.sum(t == c)) + int(np.sum(p == c))  # = 2TP + FP + FN
        f1s.append(2.0 * tp / denom if denom else 0.0)
        present.append(denom > 0)
    return f1s, present


def per_class_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> list[float]:
    """F1 = 2TP / (2TP + FP + FN) per class; 0.0 for a class neither true nor predicted."""
    return _f1_parts(y_true, y_pred, num_classes)[0]


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that are true or predicted at least once.

    A class absent from both has no defined F1 and is left out rather than counted as 0, so a
    test split without e.g. neutral examples is not penalised; a class only predicted counts 0.
    """
    f1s, present = _f1_parts(y_true, y_pred, num_classes)
    return float(np.mean([f for f, keep in zip(f1s, present, strict=True) if keep]))


def scores(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """One test's numbers: accuracy, macro-F1, F1 and prediction count per class."""
    f1s = per_class_f1(y_true, y_pred, len(labels))
    return {
        "n": len(y_true),
        "accuracy": round(float(accuracy(y_true, y_pred)), 4),
        "macro_f1": round(float(macro_f1(y_true, y_pred, len(labels))), 4),
        "per_class_f1": {label: round(float(f), 4) for label, f in zip(labels, f1s)},
        "predicted": {label: sum(1 for p in y_pred if p == i) for i, label in enumerate(labels)},
    }
