"""Many replicas: two real TorchServe servers on loopback, each serving the same archive, and a
real Prometheus (Debian's, installed by `make test`) scraping both. Each server gets half of a
shifted stream: neither half alone alarms (`trainer drift --prometheus --instance`), the counts
Prometheus sums over both do."""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from trainer.data.sources import load_source
from trainer.ops.client import TorchServeClient
from trainer.ops.server import TorchServe, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e
HALF = 30  # per server: under the 50-request window floor; the merged 60 are over it


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, model_store):
    servers = [TorchServe(tmp_path_factory.mktemp(f"replica{i}"), model_store,
                          ROOT / "config.properties", ports="free") for i in range(2)]
    try:
        for ts in servers:
            ts.start()
            TorchServeClient(ts.inference_url, ts.management_url, ts.key_file).register(
                "sentiment.v1.mar", "sentiment", workers=1)
        yield servers
    finally:
        for ts in servers:
            ts.stop()


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory, replicas):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is not installed: `make test` installs it "
                    "(scripts/check_prometheus.sh)")
    work = tmp_path_factory.mktemp("prometheus")
    targets = [ts.metrics_url.removeprefix("http://") for ts in replicas]
    (work / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: torchserve\n    static_configs: [{{targets: {json.dumps(targets)}}}]\n")
    url = f"http://127.0.0.1:{free_port()}"
    with open(work / "prometheus.log", "w") as log:
        proc = subprocess.Popen(
            ["prometheus", f"--config.file={work / 'prometheus.yml'}",
             f"--storage.tsdb.path={work / 'data'}",
             f"--web.listen-address={url.removeprefix('http://')}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: requests.get(f"{url}/-/ready", timeout=5).status_code == 200, 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_for(check, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready within {timeout} s")


def value(url: str, query: str) -> float:
    result = requests.get(f"{url}/api/v1/query", params={"query": query},
                          timeout=10).json()["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def drift(args: list[str]) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "trainer", "drift", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout)


def test_merged_replicas_alarm_where_neither_half_does(replicas, prometheus, minilm_run):
    series = 'DriftFeatureBin{ModelName="sentiment"}'
    # every series is declared at zero when a worker loads, so increase() counts from there
    wait_for(lambda: value(prometheus, f"count(count by (instance) ({series}))") == 2, 90)
    tweets = [e.text for e in load_source("tweets", 0)["tweets"].test][:2 * HALF]
    for i, ts in enumerate(replicas):
        client = TorchServeClient(ts.inference_url, ts.management_url, ts.key_file)
        for text in tweets[i * HALF:(i + 1) * HALF]:
            client.predict("sentiment", text)
    wait_for(lambda: value(prometheus, 'sum(DriftRequests{ModelName="sentiment"})')
             == 2 * HALF, 60)
    time.sleep(3)  # a few more scrapes: increase() extrapolates over the samples it has
    common = ["--prometheus", prometheus, "--model", "sentiment", "--reference",
              str(minilm_run), "--range", "5m"]
    p_min = []
    for ts in replicas:
        code, half = drift([*common, "--instance", ts.metrics_url.removeprefix("http://")])
        assert code == 0 and not half["is_drift"] and half["not_enough_requests"], half
        assert half["replicas"] == 1 and 0.8 * HALF <= half["window_size"] <= 1.3 * HALF
        p_min.append(min(t["p_corrected"] for t in half["tests"]))
    code, merged = drift(common)
    assert code == 1 and merged["is_drift"] and merged["replicas"] == 2, merged
    assert 1.6 * HALF <= merged["window_size"] <= 2.6 * HALF
    assert min(t["p_corrected"] for t in merged["tests"]) < min(p_min)  # more evidence


def test_prometheus_without_the_series_is_one_clear_error(prometheus, minilm_run):
    proc = subprocess.run([sys.executable, "-m", "trainer", "drift", "--prometheus", prometheus,
                           "--model", "no-such-model", "--reference", str(minilm_run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no DriftFeatureBin series" in proc.stderr and "no-such-model" in proc.stderr
