"""The stored drift reference: its served domains survive a round trip, and a file written
before domains were stored still loads (as one domain)."""

import json

import numpy as np
import pytest

from handlers.calibration import estimated_accuracy, tempered
from handlers.errors import ConfigError
from handlers.features import Projection, Reference
from handlers.novelty import DEFAULT_DOMAIN


def reference(domains=None, index=None) -> Reference:
    rng = np.random.default_rng(0)
    projection = Projection(np.zeros(4, np.float32), np.eye(2, 4, dtype=np.float32))
    return Reference(["neg", "pos"], ["pc1", "pc2", "confidence"], projection,
                     rng.normal(size=(6, 3)).astype(np.float32), np.array([0, 1, 0, 1, 1, 0]),
                     *([domains, index] if domains else []))


def test_old_file_without_domains_loads_as_one_domain(tmp_path):
    raw = json.loads(reference().to_bytes())
    del raw["domains"], raw["domain_index"]
    (tmp_path / "old.json").write_text(json.dumps(raw))
    loaded = Reference.load(tmp_path / "old.json")
    assert loaded.domains == [DEFAULT_DOMAIN] and loaded.domain_index.tolist() == [0] * 6
    assert loaded.domain_sizes() == {DEFAULT_DOMAIN: 6}
    assert loaded.as_test_input()["novelty"] is None  # one domain: the pooled tests only


def test_old_file_without_an_accuracy_fit_reports_the_mean_confidence(tmp_path):
    ref = reference()
    ref.temperature, ref.accuracy_fit = 2.0, {"method": "atc_neg_entropy", "atc_neg_entropy": -0.5}
    assert Reference.from_bytes(ref.to_bytes()).accuracy_fit == ref.accuracy_fit
    raw = json.loads(ref.to_bytes())
    del raw["accuracy_fit"]
    loaded = Reference.from_bytes(json.dumps(raw).encode())
    assert loaded.accuracy_fit is None and loaded.temperature == 2.0
    probs = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert estimated_accuracy(probs, 2.0, loaded.accuracy_fit) == pytest.approx(
        tempered(probs, 2.0).max(axis=1).mean())


def test_domains_round_trip(tmp_path):
    ref = reference(["nyt", "movie"], np.array([0, 0, 0, 1, 1, 1]))
    (tmp_path / "ref.json").write_bytes(ref.to_bytes())
    loaded = Reference.load(tmp_path / "ref.json")
    assert loaded.domains == ["nyt", "movie"] and loaded.domain_sizes() == {"nyt": 3, "movie": 3}
    np.testing.assert_allclose(loaded.features, ref.features, atol=1e-6)
    test_input = loaded.as_test_input()
    assert test_input["novelty"].domains == ["nyt", "movie"]
    assert [len(c) for c in test_input["novelty"].calibration] == [3, 3]


@pytest.mark.parametrize("domains, index, problem", [
    (["nyt", "nyt"], [0, 0, 0, 1, 1, 1], "distinct"),
    (["nyt", "movie"], [0, 0, 0, 1, 1], "shape"),
    (["nyt", "movie"], [0, 0, 0, 1, 1, 2], r"in \[0, 2\)"),
])
def test_inconsistent_domains_are_refused(domains, index, problem):
    with pytest.raises(ConfigError, match=problem):
        reference(domains, np.array(index))
