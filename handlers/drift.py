"""Drift test: two-sample KS per feature + two-sample chi-square on predicted classes (+ a
novelty test when the reference holds several served domains, against which the others are
mixture-matched), corrected for many tests, firing only when significant AND large.

The monitor checks again and again, so one test's alpha is not the false-alarm rate of a server
left running. Each check scans windows of the newest 50, 100, 200, ... requests up to the whole
window (a switch shows in the short ones, a small mixture only in the long ones) and fires when
a corrected p-value falls under `threshold`: with at most one check per `check_every` requests,
a union bound over scales and checks gives P(first alarm <= h) <= h / (2 ert), so the expected
run length to a false alarm on in-domain traffic is at least `ert` requests (bench/drift.py
measures it on real traffic)."""

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from handlers.errors import ConfigError
from handlers.mixture import (
    Match,
    effective_size,
    expected_class_shares,
    mixture_match,
    novelty_model,
    served_domains,
    weighted_ks,
)
from handlers.novelty import pc_names, uniformity_test


@dataclass
class DriftSettings:
    ert: int = 10_000  # expected in-domain requests before a false alarm, at least
    check_every: int = 25  # requests between checks; the ERT bound counts one check per this many
    min_effect: float = 0.05  # KS distance (or total-variation distance of classes) floor
    min_window: int = 50  # the shortest window scanned: no alarm before this many requests
    correction: str = "bh"  # bh (Benjamini-Hochberg, measured better in bench/drift.py) | bonferroni

    def validate(self) -> "DriftSettings":
        problems = []
        for name in ("ert", "check_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0 <= self.min_effect <= 1:
            problems.append(f"min_effect must be in [0, 1], got {self.min_effect}")
        if self.min_window < 2:
            problems.append(f"min_window must be >= 2, got {self.min_window}")
        if self.correction not in ("bonferroni", "bh"):
            problems.append(f"correction must be bonferroni or bh, got {self.correction!r}")
        if problems:
            raise ConfigError("drift settings: " + "; ".join(problems))
        return self

    def scales(self, n: int) -> list[int]:
        """Window lengths scanned over n requests: min_window, doubling, then all n."""
        out, size = [], self.min_window
        while size < n:
            out.append(size)
            size *= 2
        return out + [n] if n >= self.min_window else []

    def threshold(self, n: int) -> float:
        """Corrected p-value under which one scale fires (that scale's share of the bound)."""
        return self.look_threshold(len(self.scales(n)))

    def look_threshold(self, scales: int) -> float:
        """One look's share of the ERT bound, split over the scales it tests."""
        return self.check_every / (2.0 * self.ert * max(1, scales))


def corrected(p_values: list[float], method: str) -> list[float]:
    """Adjusted p-values: compare each with alpha directly."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    if m == 0:
        return []
    if method == "bonferroni":
        return np.minimum(1.0, p * m).tolist()
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(1.0, adjusted)
    return out.tolist()


def feature_tests(reference: dict[str, Any], window: dict[str, Any], match: Match | None,
                  below: float | None = None) -> list[dict[str, Any]]:
    """KS per feature: the two-sample test (as scipy's ks_2samp in its asymptotic mode), or
    the weighted one when matched. `below`: see ks_p_values."""
    tests = []
    for name, ref_values in reference["features"].items():
        values = np.asarray(window["features"].get(name, []), dtype=float)
        if len(values) == 0:
            continue
        ref = np.asarray(ref_values, dtype=float)
        if match is None:
            tests.append({"test": "ks", "feature": name, "statistic": ks_distance(ref, values)})
        else:
            statistic, p_value = weighted_ks(ref, match.weights, values)
            tests.append({"test": "ks", "feature": name, "statistic": statistic,
                          "p_value": p_value})
    if match is None and tests:  # one vectorised p-value call: most of a check's cost else
        sizes = (len(reference["classes"]), len(window["classes"]))
        for test, p in zip(tests, ks_p_values([t["statistic"] for t in tests], *sizes, below)):
            test["p_value"] = p
    return tests


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided two-sample KS distance, as scipy.stats.ks_2samp computes it."""
    a, b = np.sort(a), np.sort(b)
    both = np.concatenate([a, b])
    diffs = (np.searchsorted(a, both, side="right") / len(a)
             - np.searchsorted(b, both, side="right") / len(b))
    return float(max(np.clip(-diffs.min(), 0, 1), diffs.max()))


def ks_p_values(distances: list[float], n1: int, n2: int, below: float | None = None
                ) -> list[float | None]:
    """p-values of two-sample KS distances, as scipy.stats.ks_2samp(method="asymp") gives them
    (its default exact mode, for samples up to 10,000, cost most of a check). With `below`,
    only those that may fall under it (the others: None): scipy's exact algorithms are slowest
    for small distances, whose large p-values cannot change a decision (see window_test)."""
    from scipy import stats  # here, so the runtime imports on hosts without scipy (bench/gpu.py)

    big, small = sorted([float(n1), float(n2)], reverse=True)
    size = float(np.round(big * small / (big + small)))
    d = np.asarray(distances, dtype=float)
    todo = np.ones(len(d), bool) if below is None else d >= surely_not_below(below, size)
    p = np.ones(len(d))
    if todo.any():
        p[todo] = np.clip(stats.kstwo.sf(d[todo], size), 0, 1)
    return [float(x) if t else None for x, t in zip(p, todo)]


@functools.lru_cache(maxsize=1024)
def surely_not_below(p: float, size: float) -> float:
    """A KS distance under which the p-value at this effective size is surely >= p: 2 % under
    scipy's inverse, as the p-value falls as the distance grows. Few (p, size) pairs recur
    (a threshold per number of scales, a size per scale), so each is solved once."""
    from scipy import stats

    return 0.98 * float(stats.kstwo.isf(p, size))


def chi2_test(reference: dict[str, Any], window: dict[str, Any], match: Match | None
               ) -> dict[str, Any]:
    """Two-sample chi-square (homogeneity) of the window's predicted classes against the
    (matched) reference's. The reference is a sample too: a goodness-of-fit test that takes its
    shares as exact fires on the reference's own noise once windows are large (measured: every
    in-domain false alarm of bench/drift.py's first run)."""
    k = len(reference["labels"])
    win_counts = np.bincount(np.asarray(window["classes"], dtype=int), minlength=k)
    if match is None:
        ref_counts = np.bincount(np.asarray(reference["classes"], dtype=int), minlength=k)
        ref_size = float(ref_counts.sum())
        ref_shares = ref_counts / ref_size
    else:  # the mixture's shares, at the weighted reference's effective size
        ref_shares = expected_class_shares(reference["classes"], match.reference_domain,
                                           match.shares, k)
        ref_size = effective_size(match.weights)
    tv, chi2, p_value = homogeneity(win_counts, ref_shares * ref_size)
    return {"test": "chi2", "feature": "predicted_class", "statistic": tv, "chi2": chi2,
            "p_value": p_value}


def homogeneity(window: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(total-variation distance, chi-square, p) of a two-sample chi-square on counts: scipy's
    chi2_contingency(correction=False) written out, as its wrapper cost more than the test in
    a monitor's check."""
    from scipy import special

    window, reference = np.asarray(window, float), np.asarray(reference, float)
    table = np.vstack([window, reference])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or window.sum() <= 0 or reference.sum() <= 0:
        return 0.0, 0.0, 1.0
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    p_value = float(special.chdtrc(table.shape[1] - 1, chi2))  # dof (2 - 1)(columns - 1)
    tv = 0.5 * float(np.abs(window / window.sum() - reference / reference.sum()).sum())
    return tv, chi2, p_value


def novelty_test(novelty_p: np.ndarray, calibration_n: float) -> dict[str, Any]:
    d, p_value, n_eff = uniformity_test(novelty_p, calibration_n)
    return {"test": "novelty", "feature": "pcs", "statistic": d, "p_value": p_value,
            "effective_n": round(n_eff, 1)}


def novelty_rows(reference: dict[str, Any], window: dict[str, Any]) -> np.ndarray | None:
    """Each window row's largest conformal p-value over the served domains, for a reference
    of several (None for one): one per row, so computed once for every scale."""
    if len(served_domains(reference)) < 2 or len(window["classes"]) == 0:
        return None
    names = pc_names(list(reference["features"]))
    missing = [n for n in names if n not in window["features"]]
    if missing or not names:
        raise ConfigError(f"the window lacks the principal components {missing or 'pc1..'} "
                          "that a multi-domain reference needs")
    pcs = np.column_stack([np.asarray(window["features"][n], dtype=float) for n in names])
    return novelty_model(reference).p_values(pcs).max(axis=1)


def newest(window: dict[str, Any], n: int) -> dict[str, Any]:
    return {"classes": np.asarray(window["classes"])[-n:],
            "features": {k: np.asarray(v)[-n:] for k, v in window["features"].items()}}


def window_test(reference: dict[str, Any], window: dict[str, Any], settings: DriftSettings,
                threshold: float, class_test: bool = True,
                novelty_p: np.ndarray | None = None, decision_only: bool = False
                ) -> dict[str, Any]:
    """Every test on one window; a test fires when its corrected p < threshold and its distance
    >= min_effect. One domain: exactly scipy's asymptotic ks_2samp and chi2_contingency.

    `decision_only` leaves out the KS p-values that are surely >= threshold (None): such a
    p-value can neither fire nor, as Benjamini-Hochberg's p * m / rank >= p, lower another's
    corrected p under the threshold, so the decision is the same; corrected p-values are then
    reported only where they are under the threshold."""
    n = len(window["classes"])
    domains = served_domains(reference)
    match = mixture_match(reference, window, novelty_p) if n >= 2 and len(domains) > 1 else None
    tests = feature_tests(reference, window, match,
                          threshold if decision_only else None) if n >= 2 else []
    if class_test and n >= 2:
        tests.append(chi2_test(reference, window, match))
    if match is not None:
        tests.append(novelty_test(match.novelty_p, match.calibration_n))
    raw = [1.0 if t["p_value"] is None else t["p_value"] for t in tests]
    for test, p_adj in zip(tests, corrected(raw, settings.correction)):
        test["p_corrected"] = None if decision_only and p_adj >= threshold else p_adj
        test["fires"] = bool(p_adj < threshold and test["statistic"] >= settings.min_effect)
    shares = match.shares if match is not None else np.full(len(domains), 1.0 if n else 0.0)
    known = [t["p_corrected"] for t in tests if t["p_corrected"] is not None]
    return {"n": n, "tests": tests, "mixture_matched": match is not None,
            "served_mix": {d: round(float(s), 4) for d, s in zip(domains, shares)},
            "p_min": min(known, default=None if decision_only else 1.0),
            "fired": sorted((t for t in tests if t["fires"]), key=lambda t: t["p_corrected"])}


def drift_test(reference: dict[str, Any], window: dict[str, Any],
               settings: DriftSettings, class_test: bool = True,
               decision_only: bool = False) -> dict[str, Any]:
    """`reference`/`window`: {"features": {name: [values]}, "classes": [label index per row],
    "labels": [names]}, window rows oldest first; a reference of several served domains adds
    "domains": [names] and "domain_index": [domain per row] (and may keep a fitted "novelty").
    Scans the newest settings.scales(n) requests; returns the decision with every statistic
    behind it (those of the firing scale, else of the whole window). `class_test=False` leaves
    out the chi-square test (for comparing feature sets); `decision_only` (the monitor's
    background checks) the same decision, with fewer p-values (see window_test)."""
    n = len(window["classes"])
    threshold = settings.threshold(n)
    rows = novelty_rows(reference, window)
    scans = [window_test(reference, newest(window, k), settings, threshold, class_test,
                         None if rows is None else rows[-k:], decision_only)
             for k in settings.scales(n)]
    firing = [s for s in scans if s["fired"]]
    if firing:
        best = min(firing, key=lambda s: s["fired"][0]["p_corrected"])
    else:  # nothing fires: report the whole window (shown, never firing, when too short)
        best = scans[-1] if scans else window_test(reference, window, settings, 0.0,
                                                   class_test, rows)
    fired = best["fired"]
    return {
        "is_drift": bool(fired),
        "window_size": n,
        "fired_window": best["n"] if fired else None,
        "reference_size": len(reference["classes"]),
        "rule": (f"{fired[0]['test']}:{fired[0]['feature']} corrected p < {threshold:.2g} "
                 f"and distance >= {settings.min_effect} over the newest {best['n']} "
                 "requests") if fired else "",
        "fired": [f"{t['test']}:{t['feature']}" for t in fired],
        "not_enough_requests": n < settings.min_window,
        "max_ks": max((t["statistic"] for t in best["tests"] if t["test"] == "ks"),
                      default=0.0),
        "served_mix": best["served_mix"],
        "mixture_matched": best["mixture_matched"],
        "threshold": threshold,
        "scales": [{"requests": s["n"], "p_min": s["p_min"], "fires": bool(s["fired"])}
                   for s in scans],
        "settings": asdict(settings),
        "tests": best["tests"],
    }
