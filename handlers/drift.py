"""Drift test: two-sample KS per feature + chi-square on predicted classes (+ a novelty test when
the reference holds several served domains, against which the others are mixture-matched),
corrected for many tests, firing only when significant AND large AND the window is big enough."""

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from handlers.errors import ConfigError
from handlers.mixture import Match, expected_class_shares, mixture_match, served_domains, weighted_ks
from handlers.novelty import uniformity_test


@dataclass
class DriftSettings:
    alpha: float = 0.01  # family-wise significance level after correction
    min_effect: float = 0.1  # KS distance (or total-variation distance of classes) floor
    min_window: int = 50  # requests needed before any test may fire
    correction: str = "bh"  # bh (Benjamini-Hochberg, measured better in bench/drift.py) | bonferroni

    def validate(self) -> "DriftSettings":
        problems = []
        if not 0 < self.alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {self.alpha}")
        if not 0 <= self.min_effect <= 1:
            problems.append(f"min_effect must be in [0, 1], got {self.min_effect}")
        if self.min_window < 2:
            problems.append(f"min_window must be >= 2, got {self.min_window}")
        if self.correction not in ("bonferroni", "bh"):
            problems.append(f"correction must be bonferroni or bh, got {self.correction!r}")
        if problems:
            raise ConfigError("drift settings: " + "; ".join(problems))
        return self


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


def feature_tests(reference: dict[str, Any], window: dict[str, Any], match: Match | None
                  ) -> list[dict[str, Any]]:
    """KS per feature: scipy's exact two-sample test, or the weighted one when matched."""
    from scipy import stats  # here, so the runtime imports on hosts without scipy (bench/gpu.py)

    tests = []
    for name, ref_values in reference["features"].items():
        values = np.asarray(window["features"].get(name, []), dtype=float)
        if len(values) == 0:
            continue
        ref = np.asarray(ref_values, dtype=float)
        if match is None:
            result = stats.ks_2samp(ref, values)
            statistic, p_value = float(result.statistic), float(result.pvalue)
        else:
            statistic, p_value = weighted_ks(ref, match.weights, values)
        tests.append({"test": "ks", "feature": name, "statistic": statistic, "p_value": p_value})
    return tests


def chi2_test(reference: dict[str, Any], window: dict[str, Any], match: Match | None
               ) -> dict[str, Any]:
    """Chi-square of the window's predicted classes against the (matched) reference shares."""
    from scipy import stats

    k = len(reference["labels"])
    win_counts = np.bincount(np.asarray(window["classes"], dtype=int), minlength=k)
    n = int(win_counts.sum())
    if match is None:
        ref_counts = np.bincount(np.asarray(reference["classes"], dtype=int), minlength=k) + 0.5
        ref_shares = ref_counts / ref_counts.sum()
    else:
        ref_shares = expected_class_shares(reference["classes"], match.reference_domain,
                                           match.shares, k)
    chi2 = stats.chisquare(win_counts, ref_shares * n)
    tv = 0.5 * float(np.abs(win_counts / n - ref_shares).sum())
    return {"test": "chi2", "feature": "predicted_class", "statistic": tv,
            "chi2": float(chi2.statistic), "p_value": float(chi2.pvalue)}


def novelty_test(match: Match) -> dict[str, Any]:
    d, p_value, n_eff = uniformity_test(match.novelty_p, match.calibration_n)
    return {"test": "novelty", "feature": "pcs", "statistic": d, "p_value": p_value,
            "effective_n": round(n_eff, 1)}


def drift_test(reference: dict[str, Any], window: dict[str, Any],
               settings: DriftSettings, class_test: bool = True) -> dict[str, Any]:
    """`reference`/`window`: {"features": {name: [values]}, "classes": [label index per row],
    "labels": [names]}; a reference of several served domains adds "domains": [names] and
    "domain_index": [domain per row] (and may keep a fitted "novelty": Novelty). Returns the
    decision with every statistic behind it. `class_test=False` leaves out the chi-square test
    (for comparing feature sets). One domain: exactly scipy's ks_2samp and chisquare."""
    n = len(window["classes"])
    domains = served_domains(reference)
    match = mixture_match(reference, window) if n >= 2 and len(domains) > 1 else None
    tests = feature_tests(reference, window, match) if n >= 2 else []
    if class_test and n >= 2:
        tests.append(chi2_test(reference, window, match))
    if match is not None:
        tests.append(novelty_test(match))
    for test, p_adj in zip(tests, corrected([t["p_value"] for t in tests],
                                            settings.correction)):
        test["p_corrected"] = p_adj
        test["fires"] = bool(p_adj < settings.alpha and test["statistic"] >= settings.min_effect)
    enough = n >= settings.min_window
    fired = sorted((t for t in tests if t["fires"]), key=lambda t: t["p_corrected"]) \
        if enough else []
    shares = match.shares if match is not None else np.full(len(domains), 1.0 if n else 0.0)
    return {
        "is_drift": bool(fired),
        "window_size": n,
        "reference_size": len(reference["classes"]),
        "rule": (f"{fired[0]['test']}:{fired[0]['feature']} corrected p < {settings.alpha} "
                 f"and distance >= {settings.min_effect} with {n} >= {settings.min_window} "
                 "requests") if fired else "",
        "fired": [f"{t['test']}:{t['feature']}" for t in fired],
        "not_enough_requests": not enough,
        "max_ks": max((t["statistic"] for t in tests if t["test"] == "ks"), default=0.0),
        "served_mix": {d: round(float(s), 4) for d, s in zip(domains, shares)},
        "mixture_matched": match is not None,
        "settings": asdict(settings),
        "tests": tests,
    }
