"""A reference of several served domains: any mixture of them stays quiet, an unseen domain (alone
or mixed in) fires the novelty test, a label shift inside one domain fires the class test."""

import numpy as np
import pytest
from scipy import stats

from handlers.drift import DriftSettings, drift_test
from handlers.errors import ConfigError
from handlers.mixture import closest_mixture, reference_weights, weighted_ks
from handlers.novelty import Novelty, conformal_p, uniformity_test

LABELS = ["negative", "neutral", "positive"]
DIMS = 8
CENTRES = {"a": np.zeros(DIMS), "b": 6.0 * np.eye(DIMS)[0], "c": 6.0 * np.eye(DIMS)[1]}
OVERLAPPING = {**CENTRES, "b": 1.5 * np.eye(DIMS)[0]}  # a and b share most of their support
CLASS_P = {"a": (0.2, 0.5, 0.3), "b": (0.6, 0.1, 0.3), "c": (0.3, 0.3, 0.4)}
CONFIDENCE = {"a": 0.6, "b": 0.9, "c": 0.75}  # a non-pc feature that differs per domain
SEEDS = 20


def rows(rng, counts: dict[str, int], class_p=None, centres=CENTRES) -> dict:
    """Synthetic drift-test input: per domain a unit Gaussian around its centre in 8 pcs."""
    parts = [(d, n) for d, n in counts.items() if n]
    pcs = np.concatenate([rng.normal(size=(n, DIMS)) + centres[d] for d, n in parts])
    classes = np.concatenate([rng.choice(3, size=n, p=class_p or CLASS_P[d]) for d, n in parts])
    confidence = np.concatenate([rng.normal(CONFIDENCE[d], 0.05, n) for d, n in parts])
    features = {f"pc{i + 1}": pcs[:, i] for i in range(DIMS)} | {"confidence": confidence}
    return {"labels": LABELS, "classes": classes, "features": features,
            "domains": [d for d, _ in parts],
            "domain_index": np.concatenate([np.full(n, i) for i, (_, n) in enumerate(parts)])}


def reference(rng, centres=CENTRES) -> dict:
    return rows(rng, {"a": 400, "b": 400}, centres=centres)


IN_DOMAIN = {"a only": {"a": 300}, "b only": {"b": 300}, "50/50": {"a": 150, "b": 150},
             "90/10": {"a": 270, "b": 30}}


@pytest.mark.parametrize("centres, share_error", [(CENTRES, 0.05), (OVERLAPPING, 0.1)],
                         ids=["separated", "overlapping"])
def test_every_mixture_of_served_domains_stays_quiet(centres, share_error):
    alarms, mixes = [], []
    for seed in range(SEEDS):
        rng = np.random.default_rng(seed)
        ref = reference(rng, centres)
        for counts in IN_DOMAIN.values():
            result = drift_test(ref, rows(rng, counts, centres=centres), DriftSettings())
            alarms.append(result["is_drift"])
            mixes.append(result["served_mix"]["a"] - counts.get("a", 0) / 300)
    assert np.mean(alarms) <= 0.03, f"false alarms on {sum(alarms)} of {len(alarms)} windows"
    assert np.max(np.abs(mixes)) < share_error  # the mix is read right


def test_pooled_reference_would_fire_on_one_served_domain():
    """Why the test is mixture-matched: against the pool, a window of `a` alone looks drifted."""
    rng = np.random.default_rng(0)
    ref = reference(rng)
    pooled = {k: v for k, v in ref.items() if k not in ("domains", "domain_index")}
    window = rows(rng, {"a": 300})
    assert drift_test(pooled, window, DriftSettings())["is_drift"]
    matched = drift_test(ref, window, DriftSettings())
    assert not matched["is_drift"] and matched["mixture_matched"]
    assert matched["served_mix"]["a"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("counts", [{"c": 300}, {"a": 105, "b": 105, "c": 90}, {"a": 210, "c": 90}],
                         ids=["unseen", "30% unseen in 50/50", "30% unseen in a"])
def test_unseen_domain_fires_the_novelty_test(counts):
    hits, novelty = 0, []
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        result = drift_test(reference(rng), rows(rng, counts), DriftSettings())
        hits += result["is_drift"]
        novelty.append("novelty:pcs" in result["fired"])
    assert hits == 10 and all(novelty)


def test_label_shift_inside_one_domain_fires_the_class_test():
    rng = np.random.default_rng(7)
    result = drift_test(reference(rng), rows(rng, {"a": 300}, class_p=(0.05, 0.45, 0.5)),
                        DriftSettings())
    assert "chi2:predicted_class" in result["fired"]
    assert "novelty:pcs" not in result["fired"]


def test_conformal_p_values_are_super_uniform_in_domain():
    rng = np.random.default_rng(3)
    ref = reference(rng)
    pcs = np.column_stack([ref["features"][f"pc{i + 1}"] for i in range(DIMS)])
    model = Novelty.fit(pcs, ref["domain_index"], ref["domains"])
    fresh = rng.normal(size=(4000, DIMS))  # domain a
    p = model.p_values(fresh).max(axis=1)
    for t in (0.01, 0.05, 0.1, 0.5):
        assert np.mean(p <= t) <= t + 0.02
    unseen = model.p_values(rng.normal(size=(200, DIMS)) + CENTRES["c"]).max(axis=1)
    assert np.mean(unseen <= 0.01) > 0.9


def test_uniformity_test_is_scipys_one_sided_ks_when_the_calibration_is_exact():
    rng = np.random.default_rng(4)
    small = rng.uniform(size=200) ** 2  # stochastically smaller than uniform
    d, p_value, n_eff = uniformity_test(small, np.inf)
    expected = stats.kstest(small, "uniform", alternative="greater")
    assert d == pytest.approx(expected.statistic) and p_value == pytest.approx(expected.pvalue)
    assert p_value < 1e-3 and n_eff == 200
    assert uniformity_test(rng.uniform(size=200) ** 0.5, np.inf)[1] > 0.5  # larger: no alarm
    assert uniformity_test(small, 200)[1] > p_value  # a finite calibration is less sure


def test_conformal_p_counts_ties_as_at_least():
    assert conformal_p(np.array([0.0, 1.0, 5.0]), np.array([1.0, 2.0, 3.0])).tolist() == \
        [1.0, 1.0, 0.25]


def test_weighted_ks_with_equal_weights_is_the_two_sample_ks():
    rng = np.random.default_rng(5)
    ref, win = rng.normal(size=500), rng.normal(0.3, 1, 200)
    d, p_value = weighted_ks(ref, np.ones(500), win)
    assert d == pytest.approx(stats.ks_2samp(ref, win).statistic)
    assert p_value == pytest.approx(stats.ks_2samp(ref, win, method="asymp").pvalue, rel=1e-6)


def test_reference_weights_make_the_reference_the_estimated_mixture():
    w = reference_weights(np.array([0, 0, 1, 1, 1, 1]), np.array([0.5, 0.5]))
    assert w.tolist() == pytest.approx([0.25, 0.25, 0.125, 0.125, 0.125, 0.125])


def test_closest_mixture_recovers_the_mixture_of_overlapping_domains():
    rng = np.random.default_rng(9)
    ref = {"labels": LABELS, "classes": rng.choice(3, 800),
           "features": {"x": np.r_[rng.normal(0, 1, 400), rng.normal(1, 1, 400)]}}
    index = np.repeat([0, 1], 400)
    window = {"classes": rng.choice(3, 1000),
              "features": {"x": np.r_[rng.normal(0, 1, 700), rng.normal(1, 1, 300)]}}
    shares = closest_mixture(ref, window, index, 2)
    assert shares == pytest.approx([0.7, 0.3], abs=0.05) and shares.sum() == pytest.approx(1.0)


def test_a_domain_with_one_reference_row_is_refused():
    with pytest.raises(ConfigError, match=r"b \(1\)"):
        Novelty.fit(np.zeros((5, 2)), np.array([0, 0, 0, 0, 1]), ["a", "b"])


def test_multi_domain_window_without_pcs_is_refused():
    rng = np.random.default_rng(6)
    window = rows(rng, {"a": 100})
    del window["features"]["pc3"]
    with pytest.raises(ConfigError, match="pc3"):
        drift_test(reference(rng), window, DriftSettings())
