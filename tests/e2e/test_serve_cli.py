"""`trainer serve start|status|stop` as a user runs it: a real TorchServe from the shipped config,
trusting the user's key, left running between commands, serving a signed archive to the
README's plain-text curl call, then stopped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from trainer.ops.server import TorchServe
from trainer.packaging.archive import ArchiveSettings, build_archive
from trainer.packaging.keys import keygen

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def trainer(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """As a user runs it: the stats directory is the server's default, not the test session's."""
    env = {k: v for k, v in os.environ.items() if k != "DRIFTSERVE_STATS_DIR"}
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**env, "PYTHONPATH": str(ROOT)})


def driftserve(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The console script `pip install` put beside this Python (pyproject's [project.scripts])."""
    exe = Path(sys.executable).parent / "driftserve"
    env = {k: v for k, v in os.environ.items() if k != "DRIFTSERVE_STATS_DIR"}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env)


def files_holding(root: Path, text: str) -> list[Path]:
    """Files under `root` that hold `text`, as UTF-8 or as numpy's UTF-32 string arrays."""
    needles = (text.encode(), text.encode("utf-32-le"))
    return [p for p in root.rglob("*") if p.is_file()
            and any(n in p.read_bytes() for n in needles)]


def test_start_status_plain_text_call_and_stop(minilm_run, tmp_path):
    store = tmp_path / "model_store"
    keygen(tmp_path / "keys" / "release")
    build_archive(minilm_run, "sentiment", "1", store, ArchiveSettings(capture=5),
                  allow_weak=True, sign_key=tmp_path / "keys" / "release.key")
    config = str(ROOT / "config.properties")
    secret = "my account number is 99-1234 and the service was slow"
    bad = trainer("serve", "start", "--config", config, "--register", "nope.v1.mar",
                  cwd=tmp_path)
    assert bad.returncode == 2 and "nope.v1.mar: no such archive" in bad.stderr
    assert not (tmp_path / ".torchserve" / "server.json").exists()

    # Key paths relative to where the user stands, not to the server's working dir.
    started = trainer("serve", "start", "--config", config, "--free-ports",
                      "--trusted-keys", "keys/release.pub", "--register", "sentiment.v1.mar",
                      cwd=tmp_path)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        state = json.loads(started.stdout)
        key_file = tmp_path / ".torchserve" / "key_file.json"
        assert Path(state["key_file"]) == key_file and str(key_file) in started.stderr
        again = trainer("serve", "start", "--config", config, "--free-ports", cwd=tmp_path)
        assert again.returncode == 2 and "is running" in again.stderr

        status = driftserve("serve", "status", cwd=tmp_path)  # the installed command
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["models"] == {"sentiment": {"versions": ["1"],
                                                                     "default": "1"}}
        assert "sentiment: v1 registered; default v1" in status.stderr

        # The README's call: plain text, inference key from key_file.json.
        key = json.loads(key_file.read_text())["inference"]["key"]
        resp = requests.post(f"{state['inference_url']}/predictions/sentiment",
                             data=secret.encode(),
                             headers={"Authorization": f"Bearer {key}",
                                      "Content-Type": "text/plain"}, timeout=60)
        assert resp.status_code == 200 and resp.json()["label"]
        # Captured while it runs: under the server's tmp dir, readable by its owner only.
        deadline = time.time() + 30
        while not files_holding(tmp_path / ".torchserve", secret) and time.time() < deadline:
            time.sleep(0.5)
        held = files_holding(tmp_path / ".torchserve", secret)
        assert [p.parent.relative_to(tmp_path) for p in held] == \
            [Path(".torchserve/tmp/driftserve/sentiment/v1")]
        assert held[0].stat().st_mode & 0o777 == 0o600
        assert held[0].parent.stat().st_mode & 0o777 == 0o700

        # Another TorchServe on the default ports: client verbs given no URL still talk to the
        # server this directory's `serve start` recorded, and say which one.
        with TorchServe(tmp_path / "other", store, ROOT / "config.properties") as other:
            rollback = trainer("rollback", "--model", "sentiment", cwd=tmp_path)
            assert rollback.returncode == 2, rollback.stderr
            assert f"TorchServe: management {state['management_url']}" in rollback.stderr
            assert "no version to roll back to (registered: 1; default v1)" in rollback.stderr
            # Our key sent to the other server is refused, and said to be refused.
            sample = trainer("sample", "--model", "sentiment", "--out", "picks.jsonl",
                             "--management-url", other.management_url,
                             "--key-file", str(key_file), cwd=tmp_path)
            assert sample.returncode == 2 and "error: authorization failed" in sample.stderr
            assert other.management_url in sample.stderr and "not registered" not in sample.stderr
    finally:
        stopped = trainer("serve", "stop", cwd=tmp_path)
    assert stopped.returncode == 0 and json.loads(stopped.stdout)["stopped"] is True
    assert files_holding(tmp_path, secret) == []  # nothing of the traffic survives a stop
    with pytest.raises(ProcessLookupError):
        os.killpg(state["pid"], 0)
    gone = trainer("serve", "status", cwd=tmp_path)
    assert gone.returncode == 1 and json.loads(gone.stdout)["running"] is False


def test_a_refused_registration_names_the_workers_reason_and_leaves_no_server(minilm_run,
                                                                          tmp_path):
    store = tmp_path / "model_store"
    keygen(tmp_path / "keys" / "release")
    build_archive(minilm_run, "unsigned", "1", store, ArchiveSettings(), allow_weak=True)
    started = trainer("serve", "start", "--config", str(ROOT / "config.properties"),
                      "--free-ports", "--trusted-keys", "keys/release.pub",
                      "--register", "unsigned.v1.mar", cwd=tmp_path)
    assert started.returncode == 2, started.stderr[-2000:]
    assert "unsigned.v1.mar: the worker refused it: SignatureError: " in started.stderr
    assert "unsigned archive (driftserve.signature.json missing)" in started.stderr
    assert not (tmp_path / ".torchserve" / "server.json").exists()
    status = trainer("serve", "status", cwd=tmp_path)
    assert status.returncode == 1


def test_sigterm_to_a_trainer_verb_stops_the_torchserve_it_started(tmp_path):
    """`kill` (or a CI timeout) of `trainer demo`/`loop` unwinds like Ctrl-C: the server it
    started does not outlive it holding the ports."""
    code = "\n".join([
        "import time", "from pathlib import Path",
        "from trainer.__main__ import stop_on_sigterm", "from trainer.ops.server import TorchServe",
        "stop_on_sigterm()",
        f"with TorchServe(Path({str(tmp_path / 'work')!r}), Path({str(tmp_path)!r}), "
        f"Path({str(ROOT / 'config.properties')!r}), ports='free') as ts:",
        "    print(ts.proc.pid, flush=True)", "    time.sleep(600)"])
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        server_pid = int(proc.stdout.readline())
        os.killpg(server_pid, 0)  # the server's process group is alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    deadline = time.time() + 30  # the group's last processes are reaped by init
    while time.time() < deadline:
        try:
            os.killpg(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.killpg(server_pid, 0)
