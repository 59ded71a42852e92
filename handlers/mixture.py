"""Mixture-matched two-sample tests: the reference re-weighted to the mixture of served domains
that is closest to the window, so a window of ANY served mixture is compared with that mixture
(not with the pool), while no mixture of served domains explains an unseen one."""

from dataclasses import dataclass
from typing import Any

import numpy as np

from handlers.errors import ConfigError
from handlers.novelty import DEFAULT_DOMAIN, Novelty, calibration_size, pc_names

GRID = 64  # ECDF points per feature when fitting the mixture (the tests then use every value)
SUM_TO_ONE = 1e3  # weight of the shares-sum-to-one row in the least-squares fit


@dataclass
class Match:
    """The served mixture closest to the window, and the reference weighted to it."""

    shares: np.ndarray  # (domains,) that mixture: the window's estimated domain shares
    reference_domain: np.ndarray  # (n_ref,) each reference row's domain
    weights: np.ndarray  # (n_ref,) pi_d / n_d for the rows of domain d
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
    return Novelty.fit(pc_matrix(reference, "reference"), reference["domain_index"],
                       served_domains(reference))


def pc_matrix(data: dict[str, Any], what: str) -> np.ndarray:
    """The pc columns, in order; the novelty score and the matching need all of them."""
    names = pc_names(list(data["features"]))
    if not names:
        raise ConfigError(f"the {what} has no principal components (pc1..), which a "
                          "multi-domain reference needs")
    return np.column_stack([np.asarray(data["features"][n], dtype=float) for n in names])


def mixture_match(reference: dict[str, Any], window: dict[str, Any],
                  novelty_p: np.ndarray | None = None) -> Match:
    """Fit the closest served mixture, weight the reference to it, score the window's novelty
    (`novelty_p`: the rows' scores when the caller computed them already)."""
    model = novelty_model(reference)
    missing = [n for n in pc_names(list(reference["features"])) if n not in window["features"]]
    if missing:
        raise ConfigError(f"the window lacks the principal components {missing} that a "
                          "multi-domain reference needs")
    if novelty_p is None:
        novelty_p = model.p_values(pc_matrix(window, "window")).max(axis=1)
    index = np.asarray(reference["domain_index"], dtype=int)
    shares = closest_mixture(reference, window, index, len(model.domains))
    return Match(shares, index, reference_weights(index, shares), novelty_p,
                 calibration_size(shares, model.reference_sizes()))


def ecdf_gaps(ref: np.ndarray, index: np.ndarray, win: np.ndarray, domains: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(G, e) on a grid t of pooled quantiles: G[t, d] = ECDF of domain d, e[t] = the window's."""
    t = np.quantile(np.concatenate([ref, win]), np.linspace(0.0, 1.0, GRID))
    per_domain = [np.sort(ref[index == d]) for d in range(domains)]
    g = np.column_stack([np.searchsorted(r, t, side="right") / len(r) for r in per_domain])
    return g, np.searchsorted(np.sort(win), t, side="right") / len(win)


def closest_mixture(reference: dict[str, Any], window: dict[str, Any], index: np.ndarray,
                    domains: int) -> np.ndarray:
    """The mixture pi of served domains whose sum_d pi_d F_d comes closest to the window's ECDF,
    least squares over a grid of every feature (a minimum-distance estimate: NNLS, the
    sum-to-one constraint as a heavy extra row). Assigning rows to their nearest domain
    instead biases the shares where domains overlap, and the biased reference then fires."""
    from scipy.optimize import nnls

    parts = [ecdf_gaps(np.asarray(values, dtype=float), index,
                       np.asarray(window["features"][name], dtype=float), domains)
             for name, values in reference["features"].items()
             if len(window["features"].get(name, [])) > 0]
    g = np.concatenate([p[0] for p in parts] + [np.full((1, domains), SUM_TO_ONE)])
    e = np.concatenate([p[1] for p in parts] + [[SUM_TO_ONE]])
    shares, _ = nnls(g, e)
    if shares.sum() <= 0:  # never expected: the pooled reference
        return np.bincount(index, minlength=domains) / len(index)
    return shares / shares.sum()


def reference_weights(domain_index: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Weight pi_d / n_d on each reference row of domain d: the reference as that mixture."""
    index = np.asarray(domain_index, dtype=int)
    sizes = np.bincount(index, minlength=len(shares)).astype(float)
    return (shares / np.maximum(sizes, 1.0))[index]


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


def expected_class_shares(classes: np.ndarray, domain_index: np.ndarray, shares: np.ndarray,
                          k: int) -> np.ndarray:
    """sum_d pi_d * (class counts of domain d + 0.5) / (n_d + 0.5 k): the single-domain
    formula per domain, mixed as the window is."""
    classes = np.asarray(classes, dtype=int)
    index = np.asarray(domain_index, dtype=int)
    out = np.zeros(k)
    for d in np.flatnonzero(shares):
        counts = np.bincount(classes[index == d], minlength=k) + 0.5
        out += shares[d] / shares.sum() * counts / counts.sum()
    return out
