"""Reference-quantile bins, for drift over many replicas: every replica counts each feature in
the same bins (the reference's deciles, fixed by the archive), the handler exports the counts
as a Prometheus counter, Prometheus sums the replicas, and `trainer drift --prometheus` tests
the merged counts against the reference's."""

from typing import Any

import numpy as np

from handlers.drift import DriftSettings, corrected, homogeneity

BINS = 10


def bin_edges(features: np.ndarray) -> np.ndarray:
    """(features, BINS - 1): each column's inner deciles."""
    x = np.asarray(features, dtype=np.float64)
    return np.quantile(x, np.arange(1, BINS) / BINS, axis=0).T


def bin_counts(rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(features, BINS) request counts per bin; bin b holds edges[b - 1] < x <= edges[b]."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.stack([np.bincount(np.searchsorted(e, rows[:, i], side="left"), minlength=BINS)
                     for i, e in enumerate(edges)]).astype(np.int64)


def bin_label(index: int) -> str:
    return f"{index:02d}"


def binned_test(names: list[str], reference_bins: np.ndarray, window_bins: np.ndarray,
                reference_classes: np.ndarray, window_classes: np.ndarray,
                settings: DriftSettings) -> dict[str, Any]:
    """The drift rule on counts: a two-sample chi-square per feature (and one on predicted
    classes), Benjamini-Hochberg, one look's share of the ERT bound as the threshold. Counts
    summed over replicas and a time range hold no order, so there is one scale: the range."""
    tests = []
    for name, ref, win in zip(names, reference_bins, window_bins):
        tv, chi2, p = homogeneity(win, ref)
        tests.append({"test": "chi2_bins", "feature": name, "statistic": tv, "chi2": chi2,
                      "p_value": p})
    tv, chi2, p = homogeneity(window_classes, reference_classes)
    tests.append({"test": "chi2", "feature": "predicted_class", "statistic": tv, "chi2": chi2,
                  "p_value": p})
    n = float(np.asarray(window_bins)[0].sum()) if len(window_bins) else 0.0
    threshold = settings.look_threshold(1)
    enough = n >= settings.min_window
    for test, p_adj in zip(tests, corrected([t["p_value"] for t in tests], settings.correction)):
        test["p_corrected"] = p_adj
        test["fires"] = bool(enough and p_adj < threshold
                             and test["statistic"] >= settings.min_effect)
    fired = sorted((t for t in tests if t["fires"]), key=lambda t: t["p_corrected"])
    return {
        "is_drift": bool(fired),
        "window_size": round(n, 1),
        "threshold": threshold,
        "rule": (f"{fired[0]['test']}:{fired[0]['feature']} corrected p < {threshold:.2g} "
                 f"and distance >= {settings.min_effect} over {n:.0f} requests of every "
                 "replica") if fired else "",
        "fired": [f"{t['test']}:{t['feature']}" for t in fired],
        "not_enough_requests": not enough,
        "tests": tests,
    }
