"""The traffic monitor over a reference of two served domains: describe names the domains, and
traffic of one served domain is matched, not flagged."""

import numpy as np

from handlers.drift import DriftSettings
from handlers.features import Projection, Reference, feature_matrix, feature_names
from handlers.monitor import TrafficMonitor

LABELS = ["negative", "positive"]


def embeddings(rng, domain: int, n: int) -> np.ndarray:
    """Unit vectors around one axis per domain, like L2-normalised sentence embeddings."""
    x = rng.normal(0, 0.15, size=(n, 16))
    x[:, domain] += 1.0
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def probs(rng, n: int, positive: float) -> np.ndarray:
    p = rng.beta(8 * positive, 8 * (1 - positive), n)
    return np.column_stack([1 - p, p])


def two_domain_reference(rng) -> Reference:
    pooled = np.concatenate([embeddings(rng, 0, 300), embeddings(rng, 1, 300)])
    p = np.concatenate([probs(rng, 300, 0.3), probs(rng, 300, 0.7)])
    tokens = rng.integers(5, 40, 600)
    projection = Projection.fit(pooled, 4)
    return Reference(LABELS, feature_names(LABELS, 4), projection,
                     feature_matrix(pooled, p, tokens, projection), p.argmax(axis=1),
                     ["nyt", "movie"], np.repeat([0, 1], 300))


def test_monitor_matches_one_served_domain_and_describes_domains(tmp_path):
    rng = np.random.default_rng(0)
    monitor = TrafficMonitor(two_domain_reference(rng), tmp_path, 1000, 3600.0,
                             DriftSettings(), "w1")
    try:
        monitor.observe(embeddings(rng, 1, 300), probs(rng, 300, 0.7), rng.integers(5, 40, 300))
        described = monitor.describe()
        assert described["reference"]["domains"] == {"nyt": 300, "movie": 300}
        drift = described["drift"]
        assert drift["mixture_matched"] and drift["served_mix"]["movie"] > 0.95
        assert not drift["is_drift"], drift["fired"]
        assert [t["test"] for t in drift["tests"]][-1] == "novelty"
        monitor.observe(embeddings(rng, 2, 300), probs(rng, 300, 0.5), rng.integers(5, 40, 300))
        monitor.persist()
        assert "novelty:pcs" in monitor.check()["fired"]  # a third, unseen domain
    finally:
        monitor.close()
