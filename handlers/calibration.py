"""Accuracy without labels: temperature scaling fitted on labelled validation data at train time,
then the mean calibrated confidence of the served window estimates its accuracy (the idea of
NannyML's CBPE). It holds while the model stays calibrated on the traffic; a domain shift can
break that, which bench/accuracy_estimate.py measures per domain and mixture."""

import numpy as np
from scipy.optimize import minimize_scalar

MIN_EXAMPLES = 20  # fewer labelled rows than this: keep temperature 1 (no fit)


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


def estimated_accuracy(probs: np.ndarray, temperature: float) -> float | None:
    """Mean calibrated max-probability of the window; None for an empty window."""
    if len(probs) == 0:
        return None
    return float(tempered(probs, temperature).max(axis=1).mean())
