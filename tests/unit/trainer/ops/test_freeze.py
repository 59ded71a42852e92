"""`trainer drift --freeze-reference` (trainer/ops/freeze.py) over a real statistics directory:
what it refuses (too little traffic, traffic the current reference flags, a bad key) leaves no
file behind; what it freezes lands in the store and is adopted by the workers."""

import numpy as np
import pytest

from handlers import frozen
from handlers.drift import DriftSettings
from handlers.monitor import TrafficMonitor
from handlers.stats import acknowledged_at
from tests.unit.handlers.test_frozen import archive_reference, rows
from trainer.common.errors import DataError, SettingsError
from trainer.ops.freeze import archive_reference as mar_reference
from trainer.ops.freeze import freeze_served


def serving(tmp_path, rng, n: int, axis: int = 0) -> tuple[TrafficMonitor, object]:
    archived = archive_reference(rng)
    monitor = TrafficMonitor(archived, tmp_path / "stats", 5000, 3600.0, DriftSettings(), "w1")
    monitor.observe(*rows(rng, n, axis))
    monitor.persist()
    return monitor, archived


def freeze(tmp_path, archived, requests: int, confirmed: bool = False, sign_key=None) -> dict:
    return freeze_served(tmp_path / "stats", archived, requests, confirmed, DriftSettings(),
                         tmp_path / "store" / "m.v1.reference", sign_key, "m v1")


def written(tmp_path) -> list[str]:
    return sorted(p.name for d in (tmp_path / "store", tmp_path / "stats") if d.is_dir()
                  for p in d.rglob("frozen_reference*"))


def test_too_little_traffic_says_how_much_there_is_and_how_much_it_needs(tmp_path):
    monitor, archived = serving(tmp_path, np.random.default_rng(0), 700)
    try:
        with pytest.raises(DataError, match=r"m v1: 700 requests in its windows \(1 worker"
                                            r"\(s\)\); --freeze-reference needs 1000"):
            freeze(tmp_path, archived, 1000)
        with pytest.raises(SettingsError, match="--requests 100: .* at least 500"):
            freeze(tmp_path, archived, 100)
        assert written(tmp_path) == []
    finally:
        monitor.close()


def test_traffic_the_current_reference_flags_needs_the_operators_word(tmp_path):
    monitor, archived = serving(tmp_path, np.random.default_rng(1), 1200, axis=3)
    try:
        with pytest.raises(DataError, match="the archive's reference flags this traffic as "
                                            "drifted .*--confirm-in-domain"):
            freeze(tmp_path, archived, 1000)
        assert written(tmp_path) == []
        result = freeze(tmp_path, archived, 1000, confirmed=True)
        assert result["flagged_by_current"] is True
    finally:
        monitor.close()


def test_a_freeze_lands_in_the_store_and_the_workers_adopt_it(tmp_path):
    rng = np.random.default_rng(2)
    monitor, archived = serving(tmp_path, rng, 1200)
    try:
        result = freeze(tmp_path, archived, 1000)
        assert result["frozen_requests"] == 1000 and not result["flagged_by_current"]
        store = tmp_path / "store" / "m.v1.reference"
        stored, _ = frozen.load(store, trusted=None)
        published, manifest = frozen.load(tmp_path / "stats", trusted=None)
        assert manifest["sha256"] == result["sha256"] and len(stored.classes) == 1000
        np.testing.assert_array_equal(stored.features, published.features)
        assert acknowledged_at(tmp_path / "stats") > 0  # every window restarts
        monitor.adopt_frozen()
        monitor.observe(*rows(rng, 400))
        drift = monitor.describe()["drift"]
        assert drift["reference_size"] == 1000 and not drift["is_drift"], drift["fired"]
        monitor.observe(*rows(rng, 400, axis=5))
        monitor.persist()
        assert monitor.check()["is_drift"]  # the frozen reference still sees a switch
    finally:
        monitor.close()


def test_a_bad_sign_key_fails_before_anything_is_written(tmp_path):
    monitor, archived = serving(tmp_path, np.random.default_rng(3), 1200)
    try:
        bad = tmp_path / "bad.key"
        bad.write_text("not a key")
        with pytest.raises(Exception, match="bad.key"):
            freeze(tmp_path, archived, 1000, sign_key=bad)
        assert written(tmp_path) == []
    finally:
        monitor.close()


def test_the_archive_reference_comes_from_the_mar_or_says_what_is_wrong(tmp_path):
    with pytest.raises(DataError, match="m.v7.mar: no such archive in the model store"):
        mar_reference(tmp_path / "m.v7.mar")
    (tmp_path / "broken.mar").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="broken.mar: cannot read"):
        mar_reference(tmp_path / "broken.mar")
