"""kill -9 at seeded random points: `trainer train`, `trainer adapt`, `trainer archive` and a
worker persisting its statistics window never leave a partial artifact under its final name
(hidden temp siblings are allowed), and rerunning the command succeeds. The kill of
`trainer rollout` is in tests/e2e/test_rollout.py.

Kill points, per verb: when its hidden temp sibling appears (mid-write), when the final name
appears (mid-swap or cleanup), and at a random time. The whole process group is killed, so a
torch-model-archiver child dies with `trainer archive` instead of lingering."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from handlers.manifest import MANIFEST_NAME, verify_manifest
from handlers.stats import read_window
from trainer.common.errors import EXIT_WEAK
from trainer.learning.replay_buffer import BUFFER_FILE, read_buffer
from trainer.model.rundir import REPORT_FILE

ROOT = Path(__file__).resolve().parents[4]
SEED = int(os.environ.get("CRASH_SEED", "0"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TRIGGERS = ("temp", "final", "timer")
TINY = ["--epochs", "1", "--min-steps", "0", "--max-train", "64", "--batch-size", "16",
        "--max-length", "32"]


def visible(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))


def hidden(parent: Path) -> set[str]:
    return {p.name for p in parent.iterdir() if p.name.startswith(".")}


def version(path: Path) -> tuple[int, int] | None:
    """Changes when a new file or directory is renamed onto `path` (or written in place)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=ENV, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_and_kill(args: list[str], target: Path, trigger: str, rng: random.Random,
                 timer_s: float, log: Path) -> tuple[str, float]:
    """Start the command, kill its group at the trigger; (what happened, seconds to trigger)."""
    parent = target.parent
    known, previous = hidden(parent), version(target)
    proc = start(args, log)
    started = time.monotonic()
    fire_at = started + rng.uniform(0.2, timer_s)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > 300:
                raise TimeoutError(f"{args[:3]} ran for 300 s")
            if ((trigger == "timer" and now >= fire_at)
                    or (trigger == "temp" and hidden(parent) - known)
                    or (trigger == "final" and version(target) not in (None, previous))):
                fired = time.monotonic() - started
                time.sleep(rng.uniform(0, 0.01 if trigger == "temp" else 0.005))
                return ("killed" if proc.poll() is None else "finished"), fired
            time.sleep(0.002)
        return "finished", time.monotonic() - started
    finally:
        kill_group(proc)


def check_run_dir(path: Path) -> None:
    """A complete run dir: every file listed and matching, nothing unlisted, buffer readable."""
    files = verify_manifest(path)
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert on_disk == set(files) | {MANIFEST_NAME}
    assert BUFFER_FILE in files
    read_buffer(path)
    json.loads((path / REPORT_FILE).read_text())


def check_mar(path: Path, scratch: Path) -> None:
    """A complete .mar: a valid zip whose model files verify against their manifest."""
    with zipfile.ZipFile(path) as z:
        assert z.testzip() is None
        json.loads(z.read("MAR-INF/MANIFEST.json"))
        z.extractall(scratch)
    verify_manifest(scratch)


def crash_then_rerun(args: list[str], target: Path, check: Callable[[Path], None],
                     tmp_path: Path, seed: int) -> list[tuple[str, str, float]]:
    """Kill at every trigger, check what a reader sees after each, then run to the end."""
    rng = random.Random(seed)
    log, events, timer_s = tmp_path / "commands.log", [], 10.0
    for trigger in TRIGGERS:
        outcome, fired = run_and_kill(args, target, trigger, rng, timer_s, log)
        events.append((trigger, outcome, round(fired, 2)))
        if trigger == "temp":
            timer_s = max(1.0, fired * 1.1)  # random times span the whole run
        assert visible(target.parent) in ([], [target.name]), events
        if target.exists():
            check(target)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=300)
    # a tiny random model is usually weak (exit 3): the run is still written whole
    assert proc.returncode in (0, EXIT_WEAK), proc.stderr[-2000:]
    assert visible(target.parent) == [target.name]
    check(target)
    print(f"{args[2]}: {events}")  # shown when a test fails
    return events


def test_killed_train_leaves_no_partial_run_dir(tiny_base: Path, tmp_path: Path) -> None:
    target = tmp_path / "runs" / "v1"
    target.parent.mkdir()
    args = ["-m", "trainer", "train", "--data", "nyt", "--out", str(target),
            "--base-model", str(tiny_base), *TINY]
    events = crash_then_rerun(args, target, check_run_dir, tmp_path, SEED)
    assert ("temp", "killed") in [e[:2] for e in events]  # a kill really landed mid-write


def test_killed_adapt_leaves_no_partial_run_dir(tiny_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "runs" / "v2"
    target.parent.mkdir()
    before = verify_manifest(tiny_run)
    args = ["-m", "trainer", "adapt", "--from", str(tiny_run), "--data", "movie",
            "--out", str(target), "--max-eval", "40", "--memory", "30", *TINY]
    events = crash_then_rerun(args, target, check_run_dir, tmp_path, SEED + 1)
    assert ("temp", "killed") in [e[:2] for e in events]
    assert verify_manifest(tiny_run) == before  # vN, read by adapt, is untouched


def test_killed_archive_leaves_no_partial_mar(tiny_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    scratch = iter(range(100))

    def check(mar: Path) -> None:
        check_mar(mar, tmp_path / f"unzipped-{next(scratch)}")

    args = ["-m", "trainer", "archive", "--run", str(tiny_run), "--name", "crash",
            "--version", "1", "--model-store", str(store), "--allow-weak"]
    events = crash_then_rerun(args, store / "crash.v1.mar", check, tmp_path, SEED + 2)
    assert ("temp", "killed") in [e[:2] for e in events]


WINDOW_WRITER = """
import sys
import numpy as np
from pathlib import Path
from handlers.stats import FeatureWindow
window = FeatureWindow([f"f{i}" for i in range(2000)], 2000)
window.add(np.random.default_rng(0).normal(size=(2000, 2000)), [0] * 2000)
for i in range(10**9):
    window.save(Path(sys.argv[1]), {"capacity": 2000, "write": i})
"""


def test_killed_stats_writer_leaves_a_readable_window(tmp_path: Path) -> None:
    """A worker killed while persisting its window leaves the previous whole file, never a torn
    one that readers would skip. The window is made wide (16 MB) so that writing, not building
    the arrays, fills most of each save: a non-atomic writer fails this test."""
    rng = random.Random(SEED)
    path = tmp_path / "stats" / "4242.window.npz"
    for _ in range(6):
        before = version(path)
        proc = start(["-c", WINDOW_WRITER, str(path)], tmp_path / "writer.log")
        try:
            deadline = time.monotonic() + 60
            while version(path) == before and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)  # until this writer has written (or renamed) once
            time.sleep(rng.uniform(0, 0.3))
            assert proc.poll() is None, (tmp_path / "writer.log").read_text()[-2000:]
        finally:
            kill_group(proc)
        window = read_window(path)
        assert window is not None and window["features"].shape == (2000, 2000)
        assert visible(path.parent) == [path.name]


@pytest.fixture(autouse=True)
def _no_children_left_behind() -> Iterator[None]:
    """Every command was started in its own session and killed as a group."""
    yield
    out = subprocess.run(["pgrep", "-f", "torch-model-archiver --model-name crash"],
                         capture_output=True, text=True).stdout
    assert out.strip() == ""
