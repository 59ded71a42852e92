"""`trainer sample --model` against the real TorchServe: texts captured by the worker (opt-in at
archive time) come back as rows to label; capture off, an unknown model and too large an N are
one-line errors that write nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.data.sources import load_source, load_vader
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def sample(server, model: str, n: int, out: Path, store: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "sample", "--model", model, "--n", str(n),
         "--out", str(out), "--model-store", str(store), "--inference-url",
         server.inference_url, "--management-url", server.management_url,
         "--key-file", str(server.key_file)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_sample_returns_captured_traffic_to_label(server, client, model_store, minilm_run,
                                                  tmp_path):
    build_archive(minilm_run, "capt", "1", model_store, ArchiveSettings(capture=20),
                  allow_weak=True)
    client.register("capt.v1.mar", "capt")
    try:
        texts = [e.text for e in load_vader("tweets")[:30]]
        for text in texts:
            client.predict("capt", text)
        out = tmp_path / "to_label.jsonl"
        proc = sample(server, "capt", 10, out, model_store)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 10 and {r["text"] for r in rows} <= set(texts[-20:])
        assert json.loads(proc.stdout)["captured"] == 20
        for model, n, message in (("capt", 21, "only 20 texts are captured"),
                                  ("sentiment", 1, "capture is off for sentiment"),
                                  ("nope", 1, "'nope' is not registered")):
            bad = tmp_path / f"{model}-{n}.jsonl"
            proc = sample(server, model, n, bad, model_store)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
            said = proc.stderr.strip().splitlines()  # which server, then one error line
            assert said[0] == f"TorchServe: management {server.management_url} (from the URL " \
                              "flags)"
            assert len(said) == 2 and not bad.exists()
    finally:
        client.unregister("capt")


def test_sample_picks_the_drifted_traffic_when_capture_ran_from_the_start(
        server, client, model_store, minilm_run, tmp_path):
    """The user's scenario: capture on since v1 went live, 150 in-domain requests (nyt, which
    v1 serves), then the drift (100 tweets). The picks must be the tweets, not the old
    traffic that would be trained as the new domain."""
    build_archive(minilm_run, "since", "1", model_store, ArchiveSettings(capture=250),
                  allow_weak=True)
    client.register("since.v1.mar", "since")
    try:
        old = [e.text for e in load_source("nyt", 0)["nyt"].test[:150]]
        new = [e.text for e in load_source("tweets", 0)["tweets"].test[:100]]
        for text in old + new:
            client.predict("since", text)
        shares = {}
        for select in ("drifted", "all", "before-drift"):
            out = tmp_path / f"{select}.jsonl"
            proc = subprocess.run(
                [sys.executable, "-m", "trainer", "sample", "--model", "since", "--n", "40",
                 "--out", str(out), "--select", select, "--model-store", str(model_store),
                 "--inference-url", server.inference_url, "--management-url",
                 server.management_url, "--key-file", str(server.key_file)],
                capture_output=True, text=True, timeout=300, cwd=ROOT)
            assert proc.returncode == 0, proc.stderr[-2000:]
            rows = [json.loads(line) for line in out.read_text().splitlines()]
            assert len(rows) == 40 and set(json.loads(proc.stdout)["predicted"]) <= \
                {"negative", "neutral", "positive"}
            shares[select] = sum(r["text"] in set(new) for r in rows) / len(rows)
        print(f"share of picks from the new domain: {shares}")
        assert shares["drifted"] >= 0.9, shares
        assert shares["before-drift"] <= 0.1, shares  # the old traffic, for rollout --traffic
    finally:
        client.unregister("since")
