"""`trainer sample --model` against the real TorchServe: texts captured by the worker (opt-in at
archive time) come back as rows to label; capture off, an unknown model and too large an N are
one-line errors that write nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.archive import ArchiveSettings, build_archive
from trainer.data import load_vader

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def sample(server, model: str, n: int, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", "sample", "--model", model, "--n", str(n),
         "--out", str(out), "--inference-url", server.inference_url, "--management-url",
         server.management_url, "--key-file", str(server.key_file)],
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
        proc = sample(server, "capt", 10, out)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 10 and {r["text"] for r in rows} <= set(texts[-20:])
        assert json.loads(proc.stdout)["captured"] == 20
        for model, n, message in (("capt", 21, "only 20 texts are captured"),
                                  ("sentiment", 1, "capture is off for sentiment"),
                                  ("nope", 1, "'nope' is not registered")):
            bad = tmp_path / f"{model}-{n}.jsonl"
            proc = sample(server, model, n, bad)
            assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
            said = proc.stderr.strip().splitlines()  # which server, then one error line
            assert said[0] == f"TorchServe: management {server.management_url} (from the URL " \
                              "flags)"
            assert len(said) == 2 and not bad.exists()
    finally:
        client.unregister("capt")
