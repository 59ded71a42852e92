"""The runtime's traffic monitor: features of served requests, merged over workers."""

import json
import threading
import time

from handlers.features import REFERENCE_FILE
from handlers.runtime import ModelRuntime, RuntimeSettings
from trainer.data.sources import load_vader


def test_reference_is_stored_in_the_run_dir(tiny_run):
    ref = json.loads((tiny_run / REFERENCE_FILE).read_text())
    assert ref["names"][:2] == ["pc1", "pc2"] and "confidence" in ref["names"]
    assert ref["names"][-1] == "tokens" and "p_neutral" in ref["names"]
    assert len(ref["features"]) == len(ref["classes"]) > 100
    assert len(ref["projection"]["components"]) == 8


def two_workers(run, settings: RuntimeSettings, texts: list[str], split: int):
    """Two workers of one model version; the first serves texts[:split], the second the rest."""
    a, b = (ModelRuntime.load(run, settings=settings, name="m", version="1", worker_id=w)
            for w in ("w1", "w2"))
    a.predict(texts[:split])
    b.predict(texts[split:])
    b.monitor.persist()
    return a, b


def test_two_workers_windows_merge(tiny_run, tmp_path):
    settings = RuntimeSettings(stats_dir=str(tmp_path), window=500, drift_min_window=10)
    a, b = two_workers(tiny_run, settings, [e.text for e in load_vader("nyt")[:40]], 25)
    stats = a.describe()["stats"]
    assert stats["workers"] == 2 and stats["window_size"] == 40 and stats["requests_seen"] == 40
    assert set(stats["features"]) == set(a.monitor.reference.names)
    assert stats["features"]["tokens"]["n"] == 40
    assert abs(sum(stats["class_distribution"].values()) - 1) < 1e-3
    assert stats["reference"]["size"] > 100
    drift = stats["drift"]
    assert {"is_drift", "window_size", "tests", "rule"} <= set(drift)
    assert drift["window_size"] == 40 and len(drift["tests"]) == len(a.monitor.reference.names) + 1
    a.monitor.close()
    b.monitor.close()


def test_monitor_can_be_switched_off(tiny_run):
    rt = ModelRuntime.load(tiny_run, settings=RuntimeSettings(monitor=False))
    assert rt.monitor is None and rt.describe()["stats"] is None
    assert rt.predict(["fine"])[0]["label"]


def test_the_monitor_thread_exports_what_requests_counted(tiny_run, tmp_path):
    settings = RuntimeSettings(stats_dir=str(tmp_path), persist_every_s=0.5)
    rt = ModelRuntime.load(tiny_run, settings=settings, name="m", version="1", worker_id="w1")
    exported = threading.Event()
    rt.monitor.export = lambda: (rt.monitor.drain_bins(), exported.set())  # the handler's flush
    assert not exported.wait(1.2)  # two ticks: nothing counted, nothing exported
    rt.predict(["a fine day"])
    assert exported.wait(10) and rt.monitor.path.exists()
    exported.clear()
    rt.predict(["another day"])
    rt.describe()  # persists in this thread: the loop finds no news, yet the counts go out
    assert exported.wait(10)
    rt.monitor.close()


def test_an_acknowledged_alarm_starts_every_window_afresh(tiny_run, tmp_path):
    """`trainer drift --ack`: readers drop the rows from before it at once; each worker's own
    thread then restarts its window (seen from 0, captured texts gone) at its next tick."""
    from handlers.stats import acknowledge, acknowledged_at

    settings = RuntimeSettings(stats_dir=str(tmp_path), window=500, drift_min_window=10,
                               capture=20, persist_every_s=0.2)
    texts = [e.text for e in load_vader("nyt")[:30]]
    a, b = two_workers(tiny_run, settings, texts, 20)
    assert a.describe()["stats"]["window_size"] == 30
    directory = a.monitor.directory
    assert acknowledged_at(directory) == 0.0
    at = acknowledge(directory)
    assert acknowledged_at(directory) == at
    assert a.describe()["stats"]["window_size"] == 0  # before any worker has reset
    a.monitor.fresh_window_after_ack()  # what the monitor thread does each tick
    deadline = time.time() + 10

    def retested(rt) -> bool:  # the thread restarts the window, then tests it again
        result = rt.monitor.last_result
        return result is not None and result["checked_at"] >= at

    while not retested(b) and time.time() < deadline:  # b's own thread does it
        time.sleep(0.05)
    for rt in (a, b):
        assert retested(rt)
        assert rt.monitor.window.seen == 0 and rt.monitor.window.arrays()["classes"].size == 0
        assert rt.monitor.last_result["is_drift"] is False  # what the gauges export next
        assert rt.monitor.last_result["window_size"] == 0
    b.monitor.persist()  # as b's thread does on its next tick (its window is dirty)
    a.predict(texts[:5])
    stats = a.describe()["stats"]
    assert stats["window_size"] == 5 and stats["requests_seen"] == 5
    late = ModelRuntime.load(tiny_run, settings=settings, name="m", version="1", worker_id="w3")
    late.predict(texts[:3])  # a worker started after the ack keeps what it sees
    late.monitor.fresh_window_after_ack()
    assert late.monitor.window.seen == 3
    for rt in (a, b, late):
        rt.monitor.close()
