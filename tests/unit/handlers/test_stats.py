"""Worker windows: bounded, atomically persisted, merged across live workers of one server run,
corrupt files skipped, dead workers' and earlier runs' windows deleted."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from handlers.stats import (
    SUFFIX,
    FeatureWindow,
    current_server,
    is_alive,
    merge_windows,
    process_identity,
    read_window,
    summarize,
)

NAMES = ["x", "y"]


def window_with(values, capacity=100):
    w = FeatureWindow(NAMES, capacity)
    w.add(np.asarray(values, np.float32), [0] * len(values))
    return w


def test_window_is_bounded():
    w = FeatureWindow(NAMES, capacity=10)
    for i in range(1000):
        w.add(np.full((3, 2), i, np.float32), [1, 2, 0])
    arrays = w.arrays()
    assert arrays["features"].shape == (10, 2) and w.seen == 3000
    assert arrays["features"][-1, 0] == 999


def test_window_keeps_the_newest_rows_oldest_first_across_wraps():
    """The ring against a plain list, batches of every size (also over the capacity)."""
    rng = np.random.default_rng(0)
    w, rows, classes = FeatureWindow(NAMES, capacity=7, capture=3), [], []
    for size in [1, 3, 7, 2, 9, 0, 5, 6, 1, 13, 4]:
        batch = rng.normal(size=(size, 2)).astype(np.float32)
        labels = rng.integers(0, 3, size).tolist()
        w.add(batch, labels, [f"t{len(classes) + i}" for i in range(size)])
        rows += batch.tolist()
        classes += labels
        arrays = w.arrays()
        assert arrays["features"].tolist() == rows[-7:] and arrays["classes"].tolist() == classes[-7:]
        assert arrays["texts"].tolist() == [f"t{i}" for i in range(len(classes))][-3:]
        assert list(arrays["times"]) == sorted(arrays["times"]) and w.seen == len(classes)
    arrays["features"][:] = 0  # a copy: the window keeps its rows
    assert w.arrays()["features"].tolist() == rows[-7:]


def test_window_refuses_rows_without_texts_when_capturing_and_keeps_its_rows():
    w = FeatureWindow(NAMES, capacity=5, capture=2)
    w.add(np.ones((2, 2), np.float32), [0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="one text per row"):
        w.add(np.zeros((1, 2), np.float32), [2])
    assert w.arrays()["features"].tolist() == [[1, 1], [1, 1]] and w.seen == 2


def test_save_read_round_trip_leaves_no_temp_files(tmp_path):
    path = tmp_path / f"w1{SUFFIX}"
    window_with([[1, 2], [3, 4]]).save(path, {"capacity": 100})
    back = read_window(path)
    assert back["features"].tolist() == [[1, 2], [3, 4]] and back["meta"]["names"] == NAMES
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_merge_covers_all_workers_newest_first(tmp_path):
    window_with([[1, 1]] * 5).save(tmp_path / f"a{SUFFIX}", {})
    window_with([[2, 2]] * 5).save(tmp_path / f"b{SUFFIX}", {})
    merged = merge_windows(tmp_path, capacity=100)
    assert merged["workers"] == 2 and len(merged["classes"]) == 10 and merged["seen"] == 10
    assert sorted(set(merged["features"][:, 0].tolist())) == [1.0, 2.0]
    assert len(merge_windows(tmp_path, capacity=4)["classes"]) == 4


def test_corrupt_and_half_written_files_are_skipped_with_a_warning(tmp_path, caplog):
    good = tmp_path / f"good{SUFFIX}"
    window_with([[5, 5]] * 3).save(good, {})
    (tmp_path / f"garbage{SUFFIX}").write_bytes(b"not an npz at all")
    (tmp_path / f"half{SUFFIX}").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        merged = merge_windows(tmp_path, capacity=100)
    assert merged["workers"] == 1 and len(merged["classes"]) == 3
    assert "garbage" in caplog.text and "half" in caplog.text


def test_summary_has_moments_and_quantiles():
    s = summarize(NAMES, np.asarray([[0, 1], [2, 1], [4, 1]], np.float32))
    assert s["x"]["n"] == 3 and s["x"]["mean"] == 2 and s["x"]["q50"] == 2
    assert s["y"]["variance"] == 0


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_window_expires_and_is_deleted(tmp_path):
    me = process_identity(os.getpid())
    assert is_alive(me) and ":" in me  # Linux: pid plus start time
    live, dead, reused = (tmp_path / f"{n}{SUFFIX}" for n in ("live", "dead", "reused"))
    window_with([[1, 1]] * 3).save(live, {})
    window_with([[2, 2]] * 4).save(dead, {"worker": process_identity(_dead_pid())})
    # Our own pid with another start time: a reused pid is not the worker that wrote this.
    window_with([[3, 3]] * 5).save(reused, {"worker": f"{os.getpid()}:1"})
    # An offline reader (no server: the server may be gone) reads all and deletes nothing.
    assert merge_windows(tmp_path, capacity=100)["workers"] == 3
    merged = merge_windows(tmp_path, capacity=100, server=current_server())
    assert merged["workers"] == 1 and merged["seen"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_only_the_readers_server_run_is_merged(tmp_path):
    server = current_server()
    ours, earlier, neighbour = (tmp_path / f"{n}{SUFFIX}" for n in ("ours", "earlier", "nb"))
    window_with([[1, 1]] * 3).save(ours, {})
    window_with([[2, 2]] * 4).save(earlier, {"server": process_identity(_dead_pid())})
    # A live server sharing the directory (here: this test process): skipped, left alone.
    window_with([[3, 3]] * 5).save(neighbour, {"server": process_identity(os.getpid())})
    merged = merge_windows(tmp_path, capacity=100, server=server)
    assert merged["workers"] == 1 and merged["seen"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, neighbour.name])


CLEAN_EXIT = """
import sys
from handlers.runtime import ModelRuntime, RuntimeSettings
rt = ModelRuntime.load(sys.argv[1], settings=RuntimeSettings(stats_dir=sys.argv[2]),
                       name="m", version="1", worker_id="w")
rt.predict(["a fine day"])
rt.monitor.persist()
print(sorted(p.name for p in rt.monitor.directory.iterdir()))
"""


def test_a_worker_removes_its_window_on_a_clean_exit(tiny_run, tmp_path):
    out = subprocess.run([sys.executable, "-c", CLEAN_EXIT, str(tiny_run), str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"w{SUFFIX}" in out.stdout  # it was there while the worker ran
    assert list((tmp_path / "m" / "v1").glob(f"*{SUFFIX}")) == []
