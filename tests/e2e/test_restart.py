"""The default survives a TorchServe restart: rollout records what it serves in the model store,
and `trainer restore` puts it back on the restarted server (real TorchServe, twice). The
statistics of the restarted server count only its own run's traffic."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.mars import copy_mar
from trainer.ops.client import TorchServeClient
from trainer.ops.rollout import GateSettings, rollout
from trainer.ops.server import TorchServe
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def client_of(ts: TorchServe) -> TorchServeClient:
    return TorchServeClient(ts.inference_url, ts.management_url, ts.key_file)


def test_default_survives_a_restart_through_trainer_restore(minilm_run, tmp_path):
    store, work = tmp_path / "store", tmp_path / "work"
    store.mkdir()
    v1 = build_archive(minilm_run, "keep", "1", store, ArchiveSettings(), allow_weak=True)
    copy_mar(v1, version="2")  # same weights: the gate passes v2
    with TorchServe(work, store, ROOT / "config.properties", ports="free") as ts:
        client = client_of(ts)
        client.register("keep.v1.mar", "keep")
        result = rollout(client, store / "keep.v2.mar", "keep",
                         GateSettings(holdout=30, p95_ratio=10.0, min_new_gain=-0.01),
                         allow_weak=True)
        assert result["promoted"], result["rules"]
        for i in range(7):  # monitored traffic of this run, whose windows outlive the server
            client.predict("keep", f"Sentence number {i} of the first run.")
        assert _stats(client, "keep")["requests_seen"] == 7
    record = json.loads((store / ".keep.serving.json").read_text())
    assert record["default"] == "2" and set(record["versions"]) == {"1", "2"}

    with TorchServe(work, store, ROOT / "config.properties", ports="free") as ts:
        client = client_of(ts)
        assert client.versions("keep") == ([], None)  # a restart forgets registrations
        proc = subprocess.run(
            [sys.executable, "-m", "trainer", "restore", "--model", "keep",
             "--inference-url", ts.inference_url, "--management-url", ts.management_url,
             "--key-file", str(ts.key_file), "--model-store", str(store)],
            capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["default"] == "2"
        assert client.versions("keep") == (["1", "2"], "2")
        assert client.predict("keep", "The markets were calm today.")["version"] == "2"
        # The first run's window is still in the shared stats dir; it must not be merged.
        assert _stats(client, "keep")["requests_seen"] == 1
        assert _stats(client, "keep")["workers"] == 1
        # Keys rotated through TorchServe's token API: the client re-reads key_file.json once.
        old_key = client._keys["inference"]
        rotated = requests.get(f"{ts.management_url}/token", params={"type": "inference"},
                               headers={"Authorization": f"Bearer {client._keys['API']}"},
                               timeout=30)
        assert rotated.status_code == 200, rotated.text
        assert json.loads(ts.key_file.read_text())["inference"]["key"] != old_key
        assert client.predict("keep", "Rotated keys, same client.")["version"] == "2"
        assert client._keys["inference"] != old_key


def _stats(client: TorchServeClient, model: str) -> dict:
    return client.describe(model, customized=True)[0]["customizedMetadata"]["stats"]


def test_restore_without_a_record_says_what_is_missing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainer", "restore", "--model", "nothing",
                           "--model-store", str(tmp_path), "--management-url",
                           "http://127.0.0.1:9", "--inference-url", "http://127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{tmp_path}/.nothing.serving.json: no serving record for 'nothing'" in proc.stderr
