"""Accuracy without labels, fitted on labelled validation data at train time: temperature scaling,
then one of four estimates of the served window's accuracy. `confidence` is the mean calibrated
max-probability (the idea of NannyML's CBPE); `doc` shifts it by validation's accuracy minus
confidence (Guillory et al., 2021); `atc_*` is the share of the window whose score clears a
threshold that validation's accuracy fixes (ATC, Garg et al., ICLR 2022). Each holds only while
the traffic's confidence means on it what validation's did; bench/accuracy_estimate.py measures
them per domain and mixture."""

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

MIN_EXAMPLES = 20  # fewer labelled rows than this: keep temperature 1 and fit no estimator
METHODS = ("confidence", "doc", "atc_max_confidence", "atc_neg_entropy")
SHIPPED = "doc"  # what the monitor reports: lowest error in bench/results/accuracy-estimate.md


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), from probabilities (the window stores those, not logits)."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = tempered(probs, temperature)[np.arange(len(labels)), labels]
    return float(-np.log(np.clip(p, 1e-12, 1.0)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The T minimising validation NLL (searched over log T in [-3, 3])."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    if len(labels) < MIN_EXAMPLES:
        return {"temperature": 1.0, "n": len(labels), "fitted": False}
    best = minimize_scalar(lambda t: nll(probs, labels, float(np.exp(t))), bounds=(-3, 3),
                           method="bounded")
    temperature = float(np.exp(best.x))
    return {"temperature": round(temperature, 4), "n": len(labels), "fitted": True,
            "nll_before": round(nll(probs, labels, 1.0), 4),
            "nll_after": round(nll(probs, labels, temperature), 4)}


def score(probs: np.ndarray, name: str) -> np.ndarray:
    """ATC's per-example confidence score: the max probability or the negative entropy."""
    if name == "max_confidence":
        return probs.max(axis=1)
    if name == "neg_entropy":
        return (probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    raise ValueError(f"unknown ATC score {name!r}; expected max_confidence or neg_entropy")


def atc_threshold(scores: np.ndarray, accuracy: float) -> float:
    """t with round(accuracy * n) validation scores strictly above it (the midpoint between the
    k-th highest score and the next), so the share above t equals validation accuracy."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n, k = len(s), int(round(accuracy * len(s)))
    if k == 0:
        return float(s[-1])
    if k == n:
        return float(np.nextafter(s[0], -np.inf))
    return float((s[n - k - 1] + s[n - k]) / 2)


def fit_estimators(probs: np.ndarray, labels: np.ndarray, temperature: float
                   ) -> dict[str, Any] | None:
    """Every method's parameters on validation at the fitted temperature; None (the monitor then
    reports `confidence`) with fewer than MIN_EXAMPLES labelled rows."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) < MIN_EXAMPLES:
        return None
    p = tempered(probs, temperature)
    accuracy = float((p.argmax(axis=1) == labels).mean())
    return {"method": SHIPPED, "n": len(labels), "val_accuracy": accuracy,
            "val_confidence": float(p.max(axis=1).mean()),
            **{f"atc_{s}": atc_threshold(score(p, s), accuracy)
               for s in ("max_confidence", "neg_entropy")}}


def estimator(fit: dict[str, Any] | None) -> str:
    """The method a reference's fit names; a reference from before fits were stored (or fitted
    on too few rows) has none and gets `confidence`."""
    return fit["method"] if fit else "confidence"


def estimated_accuracy(probs: np.ndarray, temperature: float, fit: dict[str, Any] | None = None,
                       method: str | None = None) -> float | None:
    """The window's estimated accuracy by `method` (default: the fit's own; without a fit, from
    a reference written before estimators were stored, `confidence`); None for an empty window."""
    if len(probs) == 0:
        return None
    method = method or estimator(fit)
    p = tempered(probs, temperature)
    confidence = float(p.max(axis=1).mean())
    if method == "confidence":
        return confidence
    if fit is None:
        raise ValueError(f"method {method!r} needs a fit from validation data")
    if method == "doc":
        return float(np.clip(fit["val_accuracy"] - fit["val_confidence"] + confidence, 0, 1))
    if method.startswith("atc_"):
        return float((score(p, method[4:]) > fit[method]).mean())
    raise ValueError(f"unknown accuracy estimate {method!r}; expected one of {METHODS}")
