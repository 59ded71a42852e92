"""The drift rule: over every scanned window of the newest requests, corrected p < the
ERT-calibrated threshold AND distance >= floor; nothing fires before min_window requests."""

import numpy as np
import pytest

from handlers.drift import DriftSettings, corrected, drift_test, newest
from handlers.errors import ConfigError

LABELS = ["negative", "neutral", "positive"]


def sample(rng, n, shift=0.0, classes_p=(0.3, 0.4, 0.3)):
    return {"labels": LABELS, "classes": rng.choice(3, size=n, p=classes_p),
            "features": {"a": rng.normal(shift, 1, n), "b": rng.normal(0, 1, n)}}


def concat(a, b):
    return {"labels": LABELS, "classes": np.concatenate([a["classes"], b["classes"]]),
            "features": {k: np.concatenate([a["features"][k], b["features"][k]])
                         for k in a["features"]}}


def shuffled(window, rng):
    order = rng.permutation(len(window["classes"]))
    return {"labels": LABELS, "classes": window["classes"][order],
            "features": {k: v[order] for k, v in window["features"].items()}}


def test_same_distribution_stays_quiet_shift_fires():
    rng = np.random.default_rng(0)
    ref = sample(rng, 2000)
    quiet = drift_test(ref, sample(rng, 500), DriftSettings())
    assert not quiet["is_drift"] and quiet["window_size"] == 500 and quiet["rule"] == ""
    loud = drift_test(ref, sample(rng, 500, shift=1.0), DriftSettings())
    assert loud["is_drift"] and loud["fired"] == ["ks:a"]
    assert f"ks:a corrected p < {loud['threshold']:.2g}" in loud["rule"]


def test_scales_and_threshold_share_the_false_alarm_budget():
    s = DriftSettings(ert=10_000, check_every=25, min_window=50)
    assert s.scales(2000) == [50, 100, 200, 400, 800, 1600, 2000]
    assert s.scales(120) == [50, 100, 120] and s.scales(49) == []
    # per check, all scales together spend check_every / (2 ert): P(alarm by h) <= h / (2 ert)
    assert s.threshold(2000) * len(s.scales(2000)) == pytest.approx(25 / 20_000)


def test_a_switch_fires_in_a_short_window_a_small_mixture_in_a_long_one():
    rng = np.random.default_rng(4)
    ref = sample(rng, 2000)
    history = sample(rng, 1900)
    switched = concat(history, sample(rng, 100, shift=1.5))
    result = drift_test(ref, switched, DriftSettings())
    assert result["is_drift"] and result["fired_window"] <= 200
    assert not result["scales"][-1]["fires"]  # the whole window alone would not have fired
    mixture = shuffled(concat(sample(rng, 1700), sample(rng, 300, shift=1.5)), rng)  # 15 %
    result = drift_test(ref, mixture, DriftSettings())
    assert result["is_drift"] and result["fired_window"] >= 400
    assert not any(s["fires"] for s in result["scales"] if s["requests"] <= 100)


def test_false_alarms_stay_under_the_ert_bound():
    """In-domain streams checked every 25 requests: P(alarm within h) <= h / (2 ert)."""
    rng = np.random.default_rng(6)
    settings = DriftSettings()  # ert 10,000: under half a stream in 20 may alarm
    ref, streams, h = sample(rng, 2000), 20, 500
    alarms = 0
    for _ in range(streams):
        stream = sample(rng, h)
        alarms += any(drift_test(ref, newest(stream, k), settings)["is_drift"]
                      for k in range(settings.min_window, h + 1, settings.check_every))
    assert alarms <= streams * h / (2 * settings.ert)  # a fixed alpha = 0.01 gives 3 here


def test_small_window_never_fires():
    rng = np.random.default_rng(1)
    result = drift_test(sample(rng, 2000), sample(rng, 30, shift=3.0), DriftSettings())
    assert not result["is_drift"] and result["not_enough_requests"] and result["scales"] == []
    assert result["max_ks"] > 0.5  # the statistic is still reported


def test_effect_floor_blocks_tiny_but_significant_shifts():
    rng = np.random.default_rng(2)
    ref, window = sample(rng, 20000), sample(rng, 20000, shift=0.06)
    low_floor = drift_test(ref, window, DriftSettings(min_effect=0.01))
    assert low_floor["is_drift"]  # significant with this much data...
    assert not drift_test(ref, window, DriftSettings())["is_drift"]  # ...but KS < 0.05


def test_label_shift_fires_the_class_test():
    rng = np.random.default_rng(3)
    result = drift_test(sample(rng, 2000), sample(rng, 400, classes_p=(0.6, 0.05, 0.35)),
                        DriftSettings())
    assert "chi2:predicted_class" in result["fired"]


def test_corrections():
    p = [0.01, 0.04, 0.03, 0.5]
    assert corrected(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 1.0])
    assert corrected(p, "bh") == pytest.approx([0.04, 0.0533333, 0.0533333, 0.5])


def test_bad_settings_are_all_named():
    with pytest.raises(ConfigError) as info:
        DriftSettings(ert=0, check_every=2.5, min_effect=-1, min_window=0,
                      correction="holm").validate()
    for field in ("ert", "check_every", "min_effect", "min_window", "correction"):
        assert field in str(info.value)


def test_one_domain_is_exactly_scipys_two_sample_ks_and_chi_square():
    """A single-domain reference (old files, `trainer train`) keeps the pooled tests unchanged."""
    from scipy import stats

    rng = np.random.default_rng(8)
    ref, window = sample(rng, 1500), sample(rng, 300, shift=0.2, classes_p=(0.4, 0.3, 0.3))
    named = {**ref, "domains": ["nyt"], "domain_index": np.zeros(1500, int)}
    for reference, domain in ((ref, "source"), (named, "nyt")):
        result = drift_test(reference, window, DriftSettings(min_window=300))  # one scale
        assert [t["test"] for t in result["tests"]] == ["ks", "ks", "chi2"]
        for t in result["tests"][:2]:
            expected = stats.ks_2samp(ref["features"][t["feature"]], window["features"][t["feature"]],
                                      method="asymp")
            assert (t["statistic"], t["p_value"]) == (expected.statistic, expected.pvalue)
        table = [np.bincount(window["classes"], minlength=3), np.bincount(ref["classes"], minlength=3)]
        chi2, p_value = stats.chi2_contingency(table, correction=False)[:2]
        assert result["tests"][2]["chi2"] == pytest.approx(chi2)
        assert result["tests"][2]["p_value"] == pytest.approx(p_value)
        assert result["served_mix"] == {domain: 1.0} and not result["mixture_matched"]


def test_decision_only_decides_exactly_as_the_full_test_with_fewer_p_values():
    """The monitor's background check skips the KS p-values that are surely over the threshold:
    on quiet, borderline and drifted windows it must fire (or not) exactly as the full test."""
    from handlers.drift import ks_p_values

    rng = np.random.default_rng(11)
    names = [f"f{i}" for i in range(8)]
    ref = {"labels": LABELS, "classes": rng.choice(3, size=800, p=(0.3, 0.4, 0.3)),
           "features": {n: rng.normal(0, 1, 800) for n in names}}
    outcomes, skipped = set(), 0
    for trial in range(60):
        n, shift = int(rng.integers(50, 1500)), float(rng.choice([0.0, 0.15, 0.25, 0.35, 0.6]))
        window = {"labels": LABELS, "classes": rng.choice(3, size=n, p=(0.3, 0.4, 0.3)),
                  "features": {m: rng.normal(shift if i < 2 else 0.0, 1, n)
                               for i, m in enumerate(names)}}
        full = drift_test(ref, window, DriftSettings())
        quick = drift_test(ref, window, DriftSettings(), decision_only=True)
        for key in ("is_drift", "fired", "fired_window", "rule", "max_ks", "window_size"):
            assert quick[key] == full[key], (trial, key)
        for q, f in zip(quick["scales"], full["scales"]):
            assert q["fires"] == f["fires"]
            assert q["p_min"] == (f["p_min"] if f["p_min"] < full["threshold"] else None)
        skipped += sum(t["p_value"] is None for t in quick["tests"])
        outcomes.add(full["is_drift"])
    assert outcomes == {True, False} and skipped > 0
    d = np.linspace(0.0, 0.4, 81)  # across the critical distance of p = 1e-4 at these sizes
    exact, some = ks_p_values(list(d), 800, 200), ks_p_values(list(d), 800, 200, below=1e-4)
    assert all(s == e for s, e in zip(some, exact) if s is not None)
    assert all(e >= 1e-4 for s, e in zip(some, exact) if s is None)
    assert any(s is None for s in some) and any(s is not None and s < 1e-4 for s in some)
