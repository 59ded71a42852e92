"""Drift end to end: statistics merged over 2 real TorchServe workers, `trainer drift` quiet on
held-out nyt traffic and firing on tweets, Prometheus series on the metrics port."""

import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from trainer.data.sources import load_source
from trainer.model.rundir import read_report
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def two_worker_models(client, model_store, minilm_run):
    build_archive(minilm_run, "drift", "1", model_store,
                  ArchiveSettings(min_workers=2, max_workers=2, batch_size=4), allow_weak=True)
    client.register("drift.v1.mar", "drift_nyt", workers=2)
    client.register("drift.v1.mar", "drift_tweets", workers=1)
    yield
    for name in ("drift_nyt", "drift_tweets"):
        client.unregister(name)


def send(client, model, texts):
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda t: client.predict(model, t)["label"], texts))


def until(get, ok, timeout: float = 60.0):
    """Poll instead of sleeping: the workers persist and check in their own time."""
    deadline = time.time() + timeout
    while True:
        value = get()
        if ok(value) or time.time() > deadline:
            return value
        time.sleep(0.5)


def drift_cli(server, model):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "drift", "--model", model,
         "--management-url", server.management_url, "--key-file", str(server.key_file)],
        capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_statistics_cover_both_workers_and_drift_fires_only_on_tweets(server, client, minilm_run,
                                                                      two_worker_models):
    nyt = [e.text for e in load_source("nyt", seed=0)["nyt"].test[:160]]
    tweets = [e.text for e in load_source("tweets", seed=0)["tweets"].test[:160]]
    send(client, "drift_nyt", nyt)
    send(client, "drift_tweets", tweets)
    described = until(lambda: client.describe("drift_nyt", customized=True)[0],
                      lambda d: d["customizedMetadata"]["stats"]["window_size"] == 160)
    pids = {w["pid"] for w in described["workers"]}
    stats = described["customizedMetadata"]["stats"]
    assert len(pids) == 2 and stats["workers"] == 2
    assert stats["window_size"] == 160 and stats["requests_seen"] == 160
    for name in ("pc1", "confidence", "tokens", "p_neutral"):
        assert {"n", "mean", "variance", "q05", "q50", "q95"} <= set(stats["features"][name])
    assert set(stats["class_distribution"]) == {"negative", "neutral", "positive"}
    reference_size = read_report(minilm_run)["reference_sizes"]["nyt"]  # --reference-per-domain
    assert stats["reference"]["size"] == reference_size == 300 and "drift" in stats

    for text in tweets[:20]:  # holdout/evaluation traffic stays out of the statistics
        client.predict("drift_nyt", text, evaluation=True)
    code, result, err = drift_cli(server, "drift_nyt")
    assert code == 0, err
    assert result["is_drift"] is False and result["window_size"] == 160
    assert {t["feature"] for t in result["tests"]} >= {"pc1", "confidence", "predicted_class"}
    assert all("p_value" in t and "p_corrected" in t for t in result["tests"])
    assert result["settings"]["correction"] == "bh"

    code, result, err = drift_cli(server, "drift_tweets")
    assert code == 1, err
    assert result["is_drift"] is True and result["rule"] and result["fired"]
    assert "DRIFT" in err


def test_prometheus_exposes_the_drift_series(server, client, two_worker_models):
    def scrape():  # gauges go out with the batch after a check: send until they are there
        send(client, "drift_tweets", ["one more tweet!!"] * 4)
        return requests.get(f"{server.metrics_url}/metrics", timeout=30).text

    text = until(scrape, lambda t: "DriftEstimatedAccuracy" in t and "DriftFeatureBin" in t)
    for series in ("DriftRequests", "DriftPredictedClass", "DriftConfidence", "DriftKSMax",
                   "DriftAlarm", "DriftWindowSize", "DriftEstimatedAccuracy", "DriftFeatureBin"):
        assert series in text, series
    assert 'ModelName="drift_tweets"' in text and "Label=" in text

    def alarm(model: str, text: str) -> float | None:
        found = re.search(r'^DriftAlarm\{[^}]*ModelName="' + model + r'"[^}]*\} (\S+)$', text,
                          re.MULTILINE)
        return None if found is None else float(found.group(1))

    # The workers' background checks (decision only) fire on tweets, as `trainer drift` does.
    assert alarm("drift_tweets", until(scrape, lambda t: alarm("drift_tweets", t) == 1.0)) == 1.0


def test_drift_cli_errors_cleanly(server):
    code, result, err = drift_cli(server, "no_such_model")
    assert code == 2 and result is None and "404" in err


def test_served_traffic_frozen_as_the_reference_is_adopted_by_every_worker(
        server, client, model_store, two_worker_models):
    def freeze(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "trainer", "drift", "--model", "drift_nyt",
             "--freeze-reference", "--model-store", str(model_store),
             "--management-url", server.management_url, "--key-file", str(server.key_file),
             *extra], capture_output=True, text=True, timeout=120)

    nyt = [e.text for e in load_source("nyt", seed=0)["nyt"].test[160:760]]
    send(client, "drift_nyt", nyt)
    until(lambda: client.describe("drift_nyt", customized=True)[0],
          lambda d: d["customizedMetadata"]["stats"]["window_size"] >= 600)
    proc = freeze("--requests", "50000")
    assert proc.returncode == 2 and "--freeze-reference needs 50000" in proc.stderr, proc.stderr
    assert not list(model_store.glob("drift.v1.reference*"))  # nothing half-written
    proc = freeze("--requests", "600")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["frozen_requests"] == 600
    assert list((model_store / "drift.v1.reference").glob("frozen_reference.*.json"))

    def reference():
        return client.describe("drift_nyt", customized=True)[0]["customizedMetadata"]["stats"]

    # Each worker adopts it at its next tick; describe lands on either: ask until six agree.
    answers = until(lambda: [reference() for _ in range(6)],
                    lambda ss: all(s["reference"]["source"] == "frozen served traffic"
                                   for s in ss))
    assert all(s["reference"]["size"] == 600 and s["window_size"] == 0 for s in answers)
    send(client, "drift_nyt", nyt[:100])
    until(reference, lambda s: s["window_size"] == 100)  # both workers have persisted theirs
    code, result, err = drift_cli(server, "drift_nyt")
    assert code == 0 and result["reference_size"] == 600 and result["window_size"] == 100, err
