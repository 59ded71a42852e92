"""Rollout through the management API, end to end on the real TorchServe: gate pass switches the
default, a worse archive is rejected and removed, rollback, zero failed requests under load while
the default switches, the lock, bad inputs, and a rollout killed mid-way."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import torch

from tests.mars import copy_mar
from trainer.data.lineage import source_record
from trainer.data.reference_texts import read_reference_texts
from trainer.data.sources import load_source
from trainer.model.rundir import load_run, save_run
from trainer.ops.client import TorchServeClient
from trainer.ops.rollout import GateSettings, rollout, rollout_lock
from trainer.packaging.archive import ArchiveSettings, build_archive

pytestmark = pytest.mark.e2e
MODEL = "rollme"
# A loaded 2-core machine: latency is not what these tests check.
FAST = dict(holdout=60, concurrency=4, p95_ratio=10.0)
CLI_FAST = ["--holdout", "60", "--p95-ratio", "10"]
SAME_WEIGHTS = [*CLI_FAST, "--min-new-gain", "-0.01"]  # v1's weights again: no gain to show
KILL_VERSIONS = {"register": "10", "warm": "11", "gate": "12", "set-default": "13", "prune": "14"}
STALE_VERSIONS = ("15", "16")  # rollouts whose state file no longer matches the server
OTHER_DOMAIN_VERSION = "4"  # trained on another domain only


@pytest.fixture(scope="module")
def archives(minilm_run, model_store, tmp_path_factory):
    """v1 (the e2e model), v2 (same weights: gate 'not worse' passes), v3 (deliberately broken
    head that always answers 'positive': old-domain accuracy collapses). The e2e model is a
    fast, weak one (see conftest), so these archives and rollouts pass allow_weak. The versions
    that only repeat v1's weights for the kill tests are v1's archive re-labelled."""
    v1 = build_archive(minilm_run, MODEL, "1", model_store, ArchiveSettings(), allow_weak=True)
    build_archive(minilm_run, MODEL, "2", model_store, ArchiveSettings(), allow_weak=True)
    model, tokenizer, labels, report = load_run(minilm_run)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([-50.0, -50.0, 50.0]))
    report = {**report, "quality": {"weak": True, "reasons": ["always answers 'positive'"]}}
    worse = save_run(tmp_path_factory.mktemp("worse") / "v3", model, tokenizer, labels, report)
    build_archive(worse, MODEL, "3", model_store, ArchiveSettings(), allow_weak=True)
    # The same broken head, trained (its report says) on movie alone: it never saw nyt.
    movie_test = load_source("movie", 0)["movie"].test[:60]
    elsewhere = {**report, "domains": ["movie"], "domains_seen": ["movie"], "domain": "movie",
                 "domain_sources": {"movie": source_record("movie", 0, 0.5, 60, movie_test)}}
    other = save_run(tmp_path_factory.mktemp("other") / "v4", model, tokenizer, labels, elsewhere)
    build_archive(other, MODEL, OTHER_DOMAIN_VERSION, model_store, ArchiveSettings(),
                  allow_weak=True)
    for version in (*KILL_VERSIONS.values(), *STALE_VERSIONS):  # v1's weights: each passes
        copy_mar(v1, version=version)
    return model_store


@pytest.fixture(scope="module")
def rollme(client, archives):
    client.register(f"{MODEL}.v1.mar", MODEL)
    yield client
    registered, default = client.versions(MODEL)
    for v in registered:
        if v != default:
            client.unregister(MODEL, v)
    client.unregister(MODEL)


class Load:
    """Client threads hammering the default version; counts every failed request."""

    def __init__(self, server, threads=4):
        self.client = TorchServeClient(server.inference_url, server.management_url,
                                       server.key_file)
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        while not self.stop.is_set():
            try:
                self.client.predict(MODEL, "The markets were calm today.")
                self.ok += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                self.failed.append(repr(e))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()


def cli(server, *args, store=None, allow_weak=True, model=MODEL, env=None):
    """A trainer verb against `server`; rollouts pass --allow-weak (the e2e model is weak)."""
    weak = ["--allow-weak"] if allow_weak and args[0] == "rollout" else []
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args, *weak, "--model", model,
         "--inference-url", server.inference_url, "--management-url", server.management_url,
         "--key-file", str(server.key_file), *(["--model-store", str(store)] if store else [])],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_gate_pass_switches_default_under_load_then_rollback(server, rollme, archives):
    with Load(server) as load:
        result = rollout(rollme, archives / f"{MODEL}.v2.mar", MODEL,
                         GateSettings(min_new_gain=-0.01, **FAST), allow_weak=True)
        time.sleep(0.5)
    assert result["promoted"] and result["default"] == "2", result["rules"]
    assert rollme.versions(MODEL) == (["1", "2"], "2")
    assert load.failed == [] and load.ok > 10
    assert rollme.predict(MODEL, "hello")["version"] == "2"

    with Load(server) as load:
        proc = cli(server, "rollback", store=archives)
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["default"] == "1"
    # the serving record follows the rollback (what `trainer restore` would put back)
    assert json.loads((archives / f".{MODEL}.serving.json").read_text())["default"] == "1"
    assert load.failed == [] and load.ok > 5
    assert rollme.versions(MODEL) == (["1", "2"], "1")
    rollme.set_default(MODEL, "2")


def test_worse_archive_is_rejected_and_removed(server, rollme, archives):
    proc = cli(server, "rollout", "--mar", f"{MODEL}.v3.mar", *CLI_FAST, store=archives)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["promoted"] and result["default"] == "2"
    assert any(r.startswith("FAIL nyt (new)") for r in result["rules"]), result["rules"]
    assert result["outcome"] == "rejected"
    assert rollme.versions(MODEL) == (["1", "2"], "2")
    assert "rejected v3" in proc.stderr


def test_the_gate_judges_the_defaults_domains_whatever_the_candidates_lineage(server, rollme,
                                                                            archives, minilm_run):
    """A candidate whose lineage names only movie is still judged on nyt, which the default
    serves: on the held-out texts the default's archive carries and nyt's labelled test."""
    traffic = [ex.text for ex in load_source("nyt", 0)["nyt"].train[:30]]  # served before
    result = rollout(rollme, archives / f"{MODEL}.v{OTHER_DOMAIN_VERSION}.mar", MODEL,
                     GateSettings(min_new_gain=-1.0, **FAST), allow_weak=True, traffic=traffic)
    assert result["outcome"] == "rejected" and result["new_domain"] == "movie", result["rules"]
    nyt = next(r for r in result["rules"] if " nyt (old)" in r)
    assert nyt.startswith("FAIL nyt (old)") and "disagreement evidence" in nyt, nyt
    # every held-out text the default's archive carries (the candidate distilled on none), and
    # the traffic the default served, which joins nyt: v1 serves nyt alone
    assert result["churn"]["nyt"]["unlabelled"]["n"] == \
        len(read_reference_texts(minilm_run)["nyt"]) + len(traffic)
    assert result["churn"]["nyt"]["test"]["negative_flip_rate"] > 0.1
    assert rollme.versions(MODEL) == (["1", "2"], "2")


def test_weak_archive_is_refused_before_the_server_is_touched(server, rollme, archives):
    before = rollme.versions(MODEL)
    proc = cli(server, "rollout", "--mar", f"{MODEL}.v3.mar", store=archives, allow_weak=False)
    assert proc.returncode == 2 and "is marked weak" in proc.stderr and "--allow-weak" in proc.stderr
    assert rollme.versions(MODEL) == before


def test_second_rollout_is_refused_while_one_runs(server, rollme, archives):
    with rollout_lock(archives, MODEL):
        proc = cli(server, "rollout", "--mar", f"{MODEL}.v3.mar", store=archives)
    assert proc.returncode == 2
    assert "another rollout of 'rollme' is in progress" in proc.stderr
    assert rollme.versions(MODEL) == (["1", "2"], "2")


@pytest.mark.parametrize("case", ["missing", "corrupt", "registered", "wrong_key", "down",
                                  "other_model", "renamed"])
def test_bad_inputs_fail_clearly_and_change_nothing(server, rollme, archives, tmp_path, case,
                                                    minilm_run):
    mar, extra = f"{MODEL}.v3.mar", []
    if case == "missing":
        mar, words = f"{MODEL}.v9.mar", "no such archive"
    elif case == "corrupt":
        mar, words = f"{MODEL}.v8.mar", "not a usable model archive"
        (archives / mar).write_bytes(os.urandom(2048))
    elif case == "registered":
        mar, words = f"{MODEL}.v1.mar", "already registered"
    elif case == "renamed":  # another model's archive under this model's file name
        mar, words = f"{MODEL}.v7.mar", "file name says rollme v7 but the archive is other v7"
        build_archive(minilm_run, "other", "7", tmp_path, ArchiveSettings(),
                      allow_weak=True)
        (tmp_path / "other.v7.mar").rename(archives / mar)
    model = "other" if case == "other_model" else MODEL
    if case == "other_model":
        words = f"{MODEL}.v3.mar is an archive of model 'rollme', not of --model 'other'"
    env_server = server
    if case == "wrong_key":
        bad = tmp_path / "key_file.json"
        bad.write_text(json.dumps({k: {"key": "nope"} for k in ("management", "inference",
                                                                 "API")}))
        env_server = type("S", (), {"inference_url": server.inference_url,
                                    "management_url": server.management_url,
                                    "key_file": bad})()
        words = "Token Authorization failed"
    if case == "down":
        env_server = type("S", (), {"inference_url": "http://127.0.0.1:9",
                                    "management_url": "http://127.0.0.1:9",
                                    "key_file": server.key_file})()
        words = "not reachable"
    before = rollme.versions(MODEL)
    proc = cli(env_server, "rollout", "--mar", mar, *extra, store=archives, model=model)
    (archives / f"{MODEL}.v8.mar").unlink(missing_ok=True)
    (archives / f"{MODEL}.v7.mar").unlink(missing_ok=True)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr
    assert rollme.versions(MODEL) == before


def test_killed_rollout_leaves_a_working_default_and_rerun_finishes(server, rollme, archives):
    args = ["rollout", "--mar", f"{MODEL}.v3.mar", *CLI_FAST, "--allow-weak"]
    full = [sys.executable, "-m", "trainer", *args, "--model", MODEL,
            "--inference-url", server.inference_url, "--management-url", server.management_url,
            "--key-file", str(server.key_file), "--model-store", str(archives)]
    proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and "3" not in rollme.versions(MODEL)[0]:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # registered, gate not finished
    proc.wait()
    registered, default = rollme.versions(MODEL)
    assert default == "2" and rollme.predict(MODEL, "still up")["version"] == "2"
    assert not [p for p in archives.iterdir() if p.suffix in (".tmp", ".partial")]
    again = subprocess.run(full, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr  # v3 is worse: finishing means rejecting it
    assert json.loads(again.stdout)["resumed"] is True
    assert rollme.versions(MODEL) == (["1", "2"], "2")
    assert not (archives / f".{MODEL}.rollout.state").exists()
    for mar in archives.glob("*.mar"):
        if mar.name.startswith(MODEL):
            zipfile.ZipFile(mar).testzip()



@pytest.mark.parametrize("step", list(KILL_VERSIONS))
def test_rollout_killed_after_each_step_finishes_on_rerun(server, rollme, archives, step):
    """SIGKILL right after a step's action, before the state file records it (the hardest
    point: the server changed, the record did not); the rerun finishes the same rollout."""
    version = KILL_VERSIONS[step]
    mar = f"{MODEL}.v{version}.mar"
    before = rollme.versions(MODEL)[1]
    killed = cli(server, "rollout", "--mar", mar, *SAME_WEIGHTS, store=archives,
                 env={"DRIFTSERVE_ROLLOUT_KILL": f"after:{step}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (archives / f".{MODEL}.rollout.state").exists()
    # Whatever the kill left, the model answers: the old default until set-default ran.
    expected = version if step in ("set-default", "prune") else before
    assert rollme.predict(MODEL, "still up")["version"] == expected
    again = cli(server, "rollout", "--mar", mar, *SAME_WEIGHTS, store=archives)
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout)
    assert result["resumed"] and result["outcome"] == "promoted" and result["default"] == version
    registered, default = rollme.versions(MODEL)
    assert default == version and len(registered) <= 3  # pruned to --keep
    assert not (archives / f".{MODEL}.rollout.state").exists()


def test_rollout_killed_while_rejecting_finishes_the_rejection(server, rollme, archives):
    before = rollme.versions(MODEL)
    killed = cli(server, "rollout", "--mar", f"{MODEL}.v3.mar", *CLI_FAST, store=archives,
                 env={"DRIFTSERVE_ROLLOUT_KILL": "after:unregister"})
    assert killed.returncode == -signal.SIGKILL
    assert "3" not in rollme.versions(MODEL)[0]  # the action ran, the record did not
    again = cli(server, "rollout", "--mar", f"{MODEL}.v3.mar", *CLI_FAST, store=archives)
    assert again.returncode == 1, again.stderr[-2000:]
    assert json.loads(again.stdout)["resumed"] and rollme.versions(MODEL) == before


def test_a_state_file_that_no_longer_matches_is_not_followed(server, rollme, archives):
    """A rollout killed after registering, then its version unregistered (as a TorchServe
    restart does): the rerun registers it again instead of gating a version that is gone. A
    state file left by another archive of the same version number starts a fresh rollout."""
    killed = cli(server, "rollout", "--mar", f"{MODEL}.v15.mar", *SAME_WEIGHTS, store=archives,
                 env={"DRIFTSERVE_ROLLOUT_KILL": "after:warm"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rollme.unregister(MODEL, "15")
    again = cli(server, "rollout", "--mar", f"{MODEL}.v15.mar", *SAME_WEIGHTS, store=archives)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "no longer registered; registering it again" in again.stderr
    assert json.loads(again.stdout)["default"] == "15"

    state = archives / f".{MODEL}.rollout.state"
    state.write_text(json.dumps({"version": "16", "previous_default": "15", "step": "gate",
                                 "mar_sha256": "0" * 64}))  # another archive called v16
    fresh = cli(server, "rollout", "--mar", f"{MODEL}.v16.mar", *SAME_WEIGHTS, store=archives)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    result = json.loads(fresh.stdout)
    assert result["resumed"] is False and result["default"] == "16"
    assert f"registering {MODEL}.v16.mar" in fresh.stderr and not state.exists()
