"""A frozen production reference (handlers/frozen.py): written whole, checked against its
manifest (and signature where keys are trusted), adopted by a running monitor with a fresh
window, and refused with the file named when anything about it is off."""

import json

import numpy as np
import pytest

from handlers import frozen
from handlers.drift import DriftSettings
from handlers.errors import ConfigError, SignatureError
from handlers.features import Projection, Reference, feature_matrix, feature_names
from handlers.monitor import TrafficMonitor
from handlers.signing import load_private_key, load_trusted_keys
from trainer.packaging.keys import keygen

LABELS = ["negative", "positive"]


def rows(rng, n: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled, probs, tokens) like the runtime's: unit vectors around one axis."""
    x = rng.normal(0, 0.15, size=(n, 16))
    x[:, axis] += 1.0
    p = rng.beta(3, 5, n)
    return (x / np.linalg.norm(x, axis=1, keepdims=True), np.column_stack([1 - p, p]),
            rng.integers(5, 40, n))


def archive_reference(rng, n: int = 300) -> Reference:
    pooled, probs, tokens = rows(rng, n)
    projection = Projection.fit(pooled, 4)
    return Reference(LABELS, feature_names(LABELS, 4), projection,
                     feature_matrix(pooled, probs, tokens, projection), probs.argmax(axis=1),
                     temperature=1.3)


def served(reference: Reference, rng, n: int, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pooled, probs, tokens = rows(rng, n, axis)
    return feature_matrix(pooled, probs, tokens, reference.projection), probs.argmax(axis=1)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"release": keygen(d / "release"), "other": keygen(d / "other")}


def test_a_frozen_reference_round_trips_with_the_archives_projection(tmp_path):
    rng = np.random.default_rng(0)
    archived = archive_reference(rng)
    features, classes = served(archived, rng, 800)
    ref = frozen.freeze(archived, features, classes)
    doc = frozen.write(tmp_path, ref, requests_seen=900)
    assert doc["requests"] == 800 and doc["requests_seen"] == 900 and "signature" not in doc
    loaded, manifest = frozen.load(tmp_path, trusted=None)
    assert manifest["requests"] == 800 and loaded.domains == [frozen.DOMAIN]
    assert loaded.projection.to_json() == archived.projection.to_json()
    assert loaded.temperature == 1.3 and loaded.names == archived.names
    np.testing.assert_allclose(loaded.features, features, atol=1e-5)
    assert frozen.load(tmp_path / "elsewhere", trusted=None) is None  # nothing frozen there


def test_a_changed_missing_or_unlisted_file_is_refused_naming_it(tmp_path):
    rng = np.random.default_rng(1)
    archived = archive_reference(rng)
    frozen.write(tmp_path, frozen.freeze(archived, *served(archived, rng, 600)), 600)
    manifest = json.loads((tmp_path / frozen.MANIFEST).read_text())
    (name, _), = manifest["files"].items()
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data.replace(b'"temperature": 1.3', b'"temperature": 9.9'))
    with pytest.raises(SignatureError, match=f"{name}: sha256 .* differs from its manifest"):
        frozen.load(tmp_path, trusted=None)
    (tmp_path / name).unlink()
    with pytest.raises(SignatureError, match=f"{name}: listed in .* but missing"):
        frozen.load(tmp_path, trusted=None)
    manifest["files"] = {"../../etc/passwd": "0" * 64}
    (tmp_path / frozen.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SignatureError, match="is not a frozen reference file name"):
        frozen.load(tmp_path, trusted=None)
    (tmp_path / frozen.MANIFEST).write_text("{not json")
    with pytest.raises(SignatureError, match=f"{frozen.MANIFEST}: not a readable manifest"):
        frozen.load(tmp_path, trusted=None)


def test_with_trusted_keys_only_a_manifest_signed_by_one_is_accepted(tmp_path, keys):
    rng = np.random.default_rng(2)
    archived = archive_reference(rng)
    ref = frozen.freeze(archived, *served(archived, rng, 600))
    trusted = load_trusted_keys(keys["release"]["public_key"])
    frozen.write(tmp_path / "unsigned", ref, 600)
    with pytest.raises(SignatureError, match="unsigned and trusted keys are configured"):
        frozen.load(tmp_path / "unsigned", trusted)
    frozen.write(tmp_path / "other", ref, 600, load_private_key(keys["other"]["private_key"]))
    with pytest.raises(SignatureError, match="not trusted"):
        frozen.load(tmp_path / "other", trusted)
    doc = frozen.write(tmp_path / "ok", ref, 600, load_private_key(keys["release"]["private_key"]))
    assert frozen.load(tmp_path / "ok", trusted)[1]["signed_by"] == doc["key_id"]
    forged = json.loads((tmp_path / "ok" / frozen.MANIFEST).read_text())
    (name, digest), = forged["files"].items()
    forged["files"] = {name: "f" * 64}  # the list changed after signing
    (tmp_path / "ok" / frozen.MANIFEST).write_text(json.dumps(forged))
    with pytest.raises(SignatureError, match="does not match its file list"):
        frozen.load(tmp_path / "ok", trusted)


def test_a_frozen_reference_of_other_features_is_refused():
    rng = np.random.default_rng(3)
    archived = archive_reference(rng)
    other = Reference(["a", "b"], archived.names, archived.projection, archived.features,
                      archived.classes)
    with pytest.raises(ConfigError, match="where: features .* differ from the archive's"):
        frozen.compatible(other, archived, "where")


def test_a_running_monitor_adopts_a_frozen_reference_and_refuses_a_tampered_one(tmp_path):
    rng = np.random.default_rng(4)
    archived = archive_reference(rng)
    monitor = TrafficMonitor(archived, tmp_path, 2000, 3600.0, DriftSettings(), "w1")
    try:
        monitor.observe(*rows(rng, 100))
        assert monitor.describe()["reference"]["source"] == "archive (held-out data)"
        big = frozen.freeze(archived, *served(archived, rng, 1500))
        frozen.write(tmp_path, big, 1500)
        monitor.adopt_frozen()  # what the monitor thread does each tick
        described = monitor.describe()
        assert described["reference"]["source"] == "frozen served traffic"
        assert described["reference"]["size"] == 1500
        assert described["window_size"] == 0  # a fresh window for the new reference
        manifest = json.loads((tmp_path / frozen.MANIFEST).read_text())
        (name, _), = manifest["files"].items()
        (tmp_path / name).write_bytes(b"{}")
        (tmp_path / frozen.MANIFEST).write_text(json.dumps(manifest))  # a new stamp
        monitor.adopt_frozen()
        described = monitor.describe()
        assert name in described["reference"]["frozen_refused"]  # said, with the file
        assert described["reference"]["size"] == 1500  # and the adopted one kept
    finally:
        monitor.close()
