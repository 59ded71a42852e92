"""Novelty against a multi-domain reference: per-domain conformal p-values of a k-NN distance in
the principal components, so traffic from ANY mixture of served domains gives super-uniform
p-values and rows outside every served domain's support give small ones."""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from handlers.errors import ConfigError

# k of the k-th-nearest-neighbour score. Measured on MiniLM embeddings of the VADER domains (400
# held-out rows per domain): with k = 8-20 a row's largest p-value is under its own domain most
# often (82-93 %; k = 1 is 3-5 points worse), and raw pcs beat pcs standardised by the pooled
# std by 1-4 points (the embeddings are L2-normalised: the pcs share one unit, and the
# low-variance ones are mostly noise that standardising would inflate).
NEIGHBOURS = 10
BLOCK_ELEMENTS = 1 << 20  # distances held at once (4 MiB of float32): memory stays flat
PC_NAME = re.compile(r"pc\d+")
DEFAULT_DOMAIN = "source"  # the one domain of a reference written before domains were stored


def pc_names(names: Sequence[str]) -> list[str]:
    """The projected-embedding columns the novelty score is computed on."""
    return [n for n in names if PC_NAME.fullmatch(n)]


def kth_distances(x: np.ndarray, points: np.ndarray, k: int, leave_out_self: bool = False
                  ) -> np.ndarray:
    """Distance from each row of x to its k-th nearest row of `points`, in bounded blocks;
    `leave_out_self` (x is points) skips each row's own distance (leave-one-out). float32:
    the pcs are stored so, and it halves the cost of a check."""
    x, points = np.asarray(x, np.float32), np.asarray(points, np.float32)
    out = np.empty(len(x), np.float32)
    norms = (points ** 2).sum(axis=1)
    step = max(1, BLOCK_ELEMENTS // max(1, len(points)))
    for start in range(0, len(x), step):
        block = x[start:start + step]
        d2 = (block ** 2).sum(axis=1)[:, None] + norms[None, :] - 2.0 * block @ points.T
        if leave_out_self:
            d2[np.arange(len(block)), start + np.arange(len(block))] = np.inf
        out[start:start + len(block)] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return np.sqrt(np.maximum(out, 0.0))


def conformal_p(scores: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= score}) / (n + 1), calibration sorted ascending."""
    n = len(calibration)
    at_least = n - np.searchsorted(calibration, scores, side="left")
    return (1.0 + at_least) / (n + 1.0)


@dataclass
class Novelty:
    """Leave-one-out calibration of every served domain, computed once per reference."""

    domains: list[str]
    points: list[np.ndarray]  # per domain: its reference rows' pcs (n_d, dims)
    neighbours: list[int]  # per domain: k, at most n_d - 1
    calibration: list[np.ndarray]  # per domain: sorted leave-one-out scores (n_d,)

    @classmethod
    def fit(cls, pcs: np.ndarray, domain_index: np.ndarray, domains: Sequence[str],
            k: int = NEIGHBOURS) -> "Novelty":
        x = np.asarray(pcs, dtype=np.float32)
        index = np.asarray(domain_index, dtype=int)
        check_domains(x, index, domains)
        points = [x[index == d] for d in range(len(domains))]
        neighbours = [min(k, len(p) - 1) for p in points]
        loo = [kth_distances(p, p, kd, leave_out_self=True) for p, kd in zip(points, neighbours)]
        return cls(list(domains), points, neighbours, [np.sort(s) for s in loo])

    def p_values(self, pcs: np.ndarray) -> np.ndarray:
        """(n, domains): conformal p-value of each row under each served domain."""
        x = np.asarray(pcs, dtype=np.float32)
        out = np.empty((len(x), len(self.domains)))
        for d, (points, k, calibration) in enumerate(
                zip(self.points, self.neighbours, self.calibration)):
            out[:, d] = conformal_p(kth_distances(x, points, k), calibration)
        return out

    def reference_sizes(self) -> np.ndarray:
        return np.asarray([len(p) for p in self.points])


def check_domains(pcs: np.ndarray, index: np.ndarray, domains: Sequence[str]) -> None:
    """Every domain needs two reference rows (one to score, one to score it against)."""
    problems = []
    if pcs.ndim != 2 or pcs.shape[1] == 0:
        problems.append(f"needs a 2-d array of principal components, got shape {pcs.shape}")
    if len(index) != len(pcs):
        problems.append(f"{len(index)} domain indices for {len(pcs)} reference rows")
    counts = np.bincount(index[(index >= 0) & (index < len(domains))], minlength=len(domains))
    if np.any((index < 0) | (index >= len(domains))):
        problems.append(f"domain indices must be in [0, {len(domains)})")
    small = [f"{name} ({int(c)})" for name, c in zip(domains, counts) if c < 2]
    if small:
        problems.append("each domain needs >= 2 reference rows: " + ", ".join(small))
    if problems:
        raise ConfigError("novelty reference: " + "; ".join(problems))


def uniformity_test(p: np.ndarray, reference_n: float) -> tuple[float, float, float]:
    """One-sided KS, D = max_t (F_n(t) - t): are the p-values stochastically SMALLER than
    Uniform(0, 1)? They share one calibration, so the p-value uses the two-sample effective
    size n*m/(n+m) (m = the calibration's effective size). Returns (D, p-value, n_eff)."""
    from scipy import stats

    p = np.sort(np.asarray(p, dtype=np.float64))
    n = len(p)
    d_plus = float(max(0.0, np.max(np.arange(1, n + 1) / n - p)))
    n_eff = n if np.isinf(reference_n) else n * reference_n / (n + reference_n)
    p_value = float(stats.ksone.sf(d_plus, max(1, int(np.floor(n_eff))))) if d_plus > 0 else 1.0
    return d_plus, min(1.0, p_value), float(n_eff)


def calibration_size(shares: np.ndarray, sizes: np.ndarray) -> float:
    """Effective calibration size of a mixture: 1 / sum_d (w_d^2 / n_d)."""
    spread = float(np.sum(np.asarray(shares) ** 2 / np.asarray(sizes)))
    return np.inf if spread == 0 else 1.0 / spread
