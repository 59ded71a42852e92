"""Mixture-matched two-sample tests: the reference re-weighted to the window's estimated domain
shares, so a window of one served domain is compared with that domain, not with the pool."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from handlers.errors import ConfigError
from handlers.novelty import DEFAULT_DOMAIN, Novelty, assign, calibration_size, pc_names


@dataclass
class Match:
    """How the window splits over the served domains, and the reference weighted to match it."""

    shares: np.ndarray  # (domains,) window rows assigned to each domain
    reference_assigned: np.ndarray  # (n_ref,) each reference row's own (leave-one-out) domain
    weights: np.ndarray  # (n_ref,) w_d / m_d for the rows assigned to d
    novelty_p: np.ndarray  # (n,) max over domains of the window rows' conformal p-values
    calibration_n: float  # effective size of the calibration behind those p-values


def served_domains(reference: dict[str, Any]) -> list[str]:
    """A reference dict without "domains" is one domain (old files, benches)."""
    return list(reference.get("domains") or [DEFAULT_DOMAIN])


def novelty_model(reference: dict[str, Any]) -> Novelty:
    """The precomputed calibration when the caller kept one (the monitor does), else fit it."""
    if reference.get("novelty") is not None:
        return reference["novelty"]
    if reference.get("domain_index") is None:
        raise ConfigError("a reference with several domains needs 'domain_index' (one per row)")
    names = pc_names(list(reference["features"]))
    pcs = np.column_stack([np.asarray(reference["features"][n], dtype=float) for n in names]) \
        if names else np.zeros((len(reference["classes"]), 0))
    return Novelty.fit(pcs, reference["domain_index"], served_domains(reference))


def mixture_match(reference: dict[str, Any], window: dict[str, Any]) -> Match:
    """Assign window and reference rows to their least-novel domain and weight to match."""
    model = novelty_model(reference)
    names = pc_names(list(reference["features"]))
    missing = [n for n in names if n not in window["features"]]
    if missing or not names:
        raise ConfigError(f"the window lacks the principal components {missing or 'pc1..'} that "
                          "matching a multi-domain reference needs")
    p = model.p_values(np.column_stack([np.asarray(window["features"][n], dtype=float)
                                        for n in names]))
    shares = domain_shares(assign(p), len(model.domains))
    ref_assigned = assign(model.reference_p)
    return Match(shares, ref_assigned, reference_weights(ref_assigned, shares), p.max(axis=1),
                 calibration_size(shares, model.reference_sizes()))


def domain_shares(assigned: np.ndarray, domains: int) -> np.ndarray:
    """Share of the rows assigned to each domain (zeros for an empty window)."""
    counts = np.bincount(np.asarray(assigned, dtype=int), minlength=domains).astype(float)
    return counts / max(1.0, counts.sum())


def reference_weights(reference_assigned: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Weight w_d / m_d on each reference row assigned to d (m_d such rows). A window share on a
    domain no reference row was assigned to cannot be matched: the rest is renormalised."""
    assigned = np.asarray(reference_assigned, dtype=int)
    m = np.bincount(assigned, minlength=len(shares)).astype(float)
    usable = np.where(m > 0, shares, 0.0)
    if usable.sum() <= 0:  # nothing to match: the pooled reference
        return np.full(len(assigned), 1.0 / max(1, len(assigned)))
    per_row = usable / usable.sum() / np.maximum(m, 1.0)
    return per_row[assigned]


def effective_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / (w ** 2).sum())


def weighted_ecdf(values: np.ndarray, weights: np.ndarray, at: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(weights[order])])
    return cum[np.searchsorted(values[order], at, side="right")] / cum[-1]


def weighted_ks(reference: np.ndarray, weights: np.ndarray, window: np.ndarray
                ) -> tuple[float, float]:
    """Two-sided KS distance between the weighted reference and the window ECDFs; p-value from
    the KS distribution at n*m_eff/(n+m_eff) (as scipy's asymptotic two-sample mode does)."""
    from scipy import stats

    ref = np.asarray(reference, dtype=float)
    win = np.asarray(window, dtype=float)
    w = np.asarray(weights, dtype=float)
    keep = w > 0
    ref, w = ref[keep], w[keep]
    grid = np.concatenate([ref, win])
    win_cdf = np.searchsorted(np.sort(win), grid, side="right") / len(win)
    d = float(np.max(np.abs(weighted_ecdf(ref, w, grid) - win_cdf)))
    m = effective_size(w)
    en = len(win) * m / (len(win) + m)
    return d, float(np.clip(stats.kstwo.sf(d, max(1, round(en))), 0.0, 1.0))


def expected_class_shares(classes: np.ndarray, assigned: np.ndarray, shares: np.ndarray,
                          k: int) -> np.ndarray:
    """sum_d w_d * (class counts of d's reference rows + 0.5) / (m_d + 0.5 k): the pooled
    formula of the single-domain test, per domain, mixed by the window's shares."""
    classes = np.asarray(classes, dtype=int)
    assigned = np.asarray(assigned, dtype=int)
    out = np.zeros(k)
    usable = [d for d in range(len(shares)) if shares[d] > 0 and np.any(assigned == d)]
    total = sum(shares[d] for d in usable)
    for d in usable:
        counts = np.bincount(classes[assigned == d], minlength=k) + 0.5
        out += shares[d] / total * counts / counts.sum()
    if not usable:
        counts = np.bincount(classes, minlength=k) + 0.5
        out = counts / counts.sum()
    return out
