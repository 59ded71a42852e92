"""Chaos on the real TorchServe: kill -9 a worker under load, then scale workers down and up.
Only the requests in flight at the kill fail, TorchServe replaces the worker, and the statistics
count the live workers' traffic only (bench/chaos.py repeats the kill and records the figures)."""

from pathlib import Path

import pytest

from bench.chaos import kill_once, statistics, wait_for, worker_pids
from bench.fuzz import good_texts
from handlers.stats import SUFFIX
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def chaos(client, model_store, minilm_run):
    build_archive(minilm_run, "chaos", "1", model_store,
                  ArchiveSettings(min_workers=2, max_workers=2), allow_weak=True)
    client.register("chaos.v1.mar", "chaos", workers=2)
    yield client
    client.unregister("chaos")


def windows(stats_dir: Path) -> list[str]:
    return sorted(p.name for p in (stats_dir / "chaos" / "v1").glob(f"*{SUFFIX}"))


def test_kill_9_under_load_fails_only_in_flight_requests(chaos, stats_dir):
    result = kill_once(chaos, good_texts(40), threads=4)
    assert result["replacement"], result  # TorchServe started a new worker
    assert 0 < result["requests"] and result["failed"] <= result["threads"], result
    assert result["failed_after_recovery"] == 0, result
    assert result["answered_during_recovery"] > 0, result  # the other worker kept serving
    assert result["statistics_workers"] == 2, result
    assert f"{result['victim']}{SUFFIX}" not in windows(stats_dir)  # expired, not merged


def test_scaling_down_and_up_keeps_statistics_to_the_live_workers(chaos, stats_dir):
    texts = good_texts(40)
    chaos.scale("chaos", 1)
    assert len(worker_pids(chaos, "chaos")) == 1
    wait_for(lambda: statistics(chaos, "chaos")["workers"] == 1, 30, "one worker's window")
    assert len(windows(stats_dir)) == 1
    chaos.scale("chaos", 2)
    assert len(worker_pids(chaos, "chaos")) == 2
    seen = statistics(chaos, "chaos")["requests_seen"]
    for text in texts:
        chaos.predict("chaos", text)
    wait_for(lambda: statistics(chaos, "chaos")["requests_seen"] == seen + len(texts), 30,
             "the new traffic counted")
