"""Reference-decile bins: alike on every replica, summable, and tested like the windows are."""

import numpy as np

from handlers.bins import BINS, bin_counts, bin_edges, binned_test
from handlers.drift import DriftSettings

NAMES = ["a", "b"]


def test_reference_fills_its_deciles_and_halves_sum_to_the_whole():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(1000, 2))
    edges = bin_edges(ref)
    assert edges.shape == (2, BINS - 1)
    assert bin_counts(ref, edges).tolist() == [[100] * BINS, [100] * BINS]
    assert bin_counts(np.array([[edges[0][0], -9.0]]), edges)[:, 0].tolist() == [1, 1]  # x <= edge
    traffic = rng.normal(size=(300, 2))
    merged = bin_counts(traffic[:120], edges) + bin_counts(traffic[120:], edges)
    assert (merged == bin_counts(traffic, edges)).all()  # what Prometheus' sum relies on


def test_binned_rule_quiet_in_domain_fires_on_a_shift_and_waits_for_min_window():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 2))
    edges, classes = bin_edges(ref), np.array([600, 800, 600])
    ref_bins = bin_counts(ref, edges)

    def test(rows, window_classes):
        return binned_test(NAMES, ref_bins, bin_counts(rows, edges), classes, window_classes,
                           DriftSettings())

    quiet = test(rng.normal(size=(1500, 2)), np.array([450, 600, 450]))
    assert not quiet["is_drift"] and quiet["window_size"] == 1500
    shifted = rng.normal(size=(1500, 2)) + [0.5, 0.0]
    loud = test(shifted, np.array([450, 600, 450]))
    assert loud["is_drift"] and loud["fired"] == ["chi2_bins:a"]
    assert loud["threshold"] == DriftSettings().check_every / (2 * DriftSettings().ert)
    labels = test(rng.normal(size=(1500, 2)), np.array([900, 150, 450]))
    assert labels["fired"] == ["chi2:predicted_class"]
    few = test(shifted[:40] + [2.0, 0.0], np.array([10, 20, 10]))
    assert not few["is_drift"] and few["not_enough_requests"]
    assert min(t["p_corrected"] for t in few["tests"]) < few["threshold"]  # significant, too few
