"""The drift rule: corrected p < alpha AND distance >= floor AND enough requests."""

import numpy as np
import pytest

from handlers.drift import DriftSettings, corrected, drift_test
from handlers.errors import ConfigError

LABELS = ["negative", "neutral", "positive"]


def sample(rng, n, shift=0.0, classes_p=(0.3, 0.4, 0.3)):
    return {"labels": LABELS, "classes": rng.choice(3, size=n, p=classes_p),
            "features": {"a": rng.normal(shift, 1, n), "b": rng.normal(0, 1, n)}}


def test_same_distribution_stays_quiet_shift_fires():
    rng = np.random.default_rng(0)
    ref = sample(rng, 2000)
    quiet = drift_test(ref, sample(rng, 500), DriftSettings())
    assert not quiet["is_drift"] and quiet["window_size"] == 500 and quiet["rule"] == ""
    loud = drift_test(ref, sample(rng, 500, shift=1.0), DriftSettings())
    assert loud["is_drift"] and loud["fired"] == ["ks:a"]
    assert "ks:a corrected p < 0.01" in loud["rule"] and "500 >= 50 requests" in loud["rule"]


def test_small_window_never_fires():
    rng = np.random.default_rng(1)
    result = drift_test(sample(rng, 2000), sample(rng, 30, shift=3.0), DriftSettings())
    assert not result["is_drift"] and result["not_enough_requests"]
    assert result["max_ks"] > 0.5  # the statistic is still reported


def test_effect_floor_blocks_tiny_but_significant_shifts():
    rng = np.random.default_rng(2)
    ref, window = sample(rng, 20000), sample(rng, 20000, shift=0.12)
    low_floor = drift_test(ref, window, DriftSettings(min_effect=0.01))
    assert low_floor["is_drift"]  # significant with this much data...
    assert not drift_test(ref, window, DriftSettings())["is_drift"]  # ...but KS < 0.1


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
        DriftSettings(alpha=2, min_effect=-1, min_window=0, correction="holm").validate()
    for field in ("alpha", "min_effect", "min_window", "correction"):
        assert field in str(info.value)


def test_one_domain_is_exactly_scipys_ks_and_chisquare():
    """A single-domain reference (old files, `trainer train`) keeps the pooled tests unchanged."""
    from scipy import stats

    rng = np.random.default_rng(8)
    ref, window = sample(rng, 1500), sample(rng, 300, shift=0.2, classes_p=(0.4, 0.3, 0.3))
    named = {**ref, "domains": ["nyt"], "domain_index": np.zeros(1500, int)}
    for reference, domain in ((ref, "source"), (named, "nyt")):
        result = drift_test(reference, window, DriftSettings())
        assert [t["test"] for t in result["tests"]] == ["ks", "ks", "chi2"]
        for t in result["tests"][:2]:
            expected = stats.ks_2samp(ref["features"][t["feature"]], window["features"][t["feature"]])
            assert (t["statistic"], t["p_value"]) == (expected.statistic, expected.pvalue)
        counts = np.bincount(ref["classes"], minlength=3) + 0.5
        chi2 = stats.chisquare(np.bincount(window["classes"], minlength=3), counts / counts.sum() * 300)
        assert (result["tests"][2]["chi2"], result["tests"][2]["p_value"]) == (chi2.statistic, chi2.pvalue)
        assert result["served_mix"] == {domain: 1.0} and not result["mixture_matched"]
