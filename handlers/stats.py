"""Per-worker bounded feature windows, persisted atomically so readers can merge all workers.

Lifecycle: each window names its worker and its server run (pid + the process's start time, so a
reused pid never passes for the one it replaced). A merge takes only live workers of the reader's
own server run: TorchServe restarts a crashed worker under a new pid and keeps its temp dir
across runs, so a dead worker's window, or one from an earlier run, is deleted, never merged.
"""

import io
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from handlers.atomic import atomic_write_bytes

log = logging.getLogger(__name__)
SUFFIX = ".window.npz"
ACK_FILE = "acknowledged.json"


class FeatureWindow:
    """The last `capacity` requests' features: memory stays flat however much traffic comes.
    With `capture` > 0 the texts of the last `capture` requests are kept too (opt-in, for
    labelling): they belong to the window's last rows, at most capture x max_chars characters.
    Rows live in preallocated rings, so a snapshot for persisting is a copy of three arrays."""

    def __init__(self, names: list[str], capacity: int, capture: int = 0) -> None:
        self.names = list(names)
        self.capacity = capacity
        self._features = np.zeros((capacity, len(self.names)), np.float32)
        self._classes = np.zeros(capacity, np.int16)
        self._times = np.zeros(capacity, np.float64)
        self._next = 0  # the ring slot the next row goes to
        self.size = 0
        self.texts: deque[str] = deque(maxlen=min(capture, capacity))
        self.seen = 0

    def add(self, features: np.ndarray, classes: list[int],
            texts: list[str] | None = None) -> None:
        if self.texts.maxlen and (texts is None or len(texts) != len(classes)):
            raise ValueError("capture is on: add() needs one text per row")
        n = len(classes)
        rows = np.asarray(features, dtype=np.float32).reshape(n, len(self.names))
        keep = min(n, self.capacity)
        slots = (self._next + np.arange(n - keep, n)) % self.capacity
        self._features[slots] = rows[n - keep:]
        self._classes[slots] = np.asarray(classes[n - keep:], dtype=np.int16)
        self._times[slots] = time.time()
        self._next = (self._next + n) % self.capacity
        self.size = min(self.capacity, self.size + n)
        if self.texts.maxlen:
            self.texts.extend(texts)
        self.seen += n

    def arrays(self) -> dict[str, np.ndarray]:
        """Copies, oldest row first."""
        order = (self._next - self.size + np.arange(self.size)) % self.capacity
        return {
            "features": self._features[order],
            "classes": self._classes[order],
            "times": self._times[order],
            "texts": np.asarray(list(self.texts), dtype=np.str_),  # unicode array: no pickle
        }

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        save_window(path, self.arrays(), self.names, self.seen, meta)


def save_window(path: Path, arrays: dict[str, np.ndarray], names: list[str], seen: int,
                meta: dict[str, Any]) -> None:
    """Write beside, rename: a worker killed mid-write leaves the old file intact. Not fsynced:
    only a power loss could then lose the last writes, and a new server run starts its windows
    afresh anyway (see live_windows), so waiting for the disk each second bought nothing."""
    buf = io.BytesIO()
    owner = {"worker": process_identity(os.getpid()), "server": process_identity(os.getppid())}
    np.savez(buf, **arrays, meta=np.asarray(json.dumps(
        {**owner, **meta, "names": names, "seen": seen, "pid": os.getpid()})))
    atomic_write_bytes(path, buf.getvalue(), durable=False)


def read_window(path: Path) -> dict[str, Any] | None:
    """One worker's window, or None (with a warning) when the file is corrupt or half-written."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            data = {"features": z["features"], "classes": z["classes"], "times": z["times"],
                    "texts": z["texts"] if "texts" in z.files else np.zeros(0, np.str_)}
        if data["features"].shape != (len(data["classes"]), len(meta["names"])) \
                or len(data["texts"]) > len(data["classes"]):
            raise ValueError("array shapes disagree")
        return {**data, "meta": meta}
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
        log.warning("skipping unreadable stats window %s: %s", path, e)
        return None


def process_identity(pid: int) -> str:
    """"pid:start-time" from /proc (Linux); the bare pid where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}:{stat[stat.rindex(')') + 2:].split()[19]}"  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return str(pid)


def is_alive(identity: Any) -> bool:
    pid = str(identity).split(":")[0]
    if not pid.isdigit():
        return False
    if ":" in str(identity):
        return process_identity(int(pid)) == identity
    try:
        os.kill(int(pid), 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def current_server() -> str:
    """The server run this worker belongs to: its parent, TorchServe's frontend."""
    return process_identity(os.getppid())


def live_windows(directory: Path, server: str | None = None) -> list[dict[str, Any]]:
    """With `server` (a worker reading its own server's traffic): the windows of that run's live
    workers; stale files are deleted. Without (an offline reader, e.g. `trainer drift
    --stats-dir` after the server stopped): every readable window, nothing deleted."""
    parts = []
    for path in sorted(Path(directory).glob(f"*{SUFFIX}")):
        window = read_window(path)
        if window is None:
            continue
        meta = window["meta"]
        if server is not None and meta.get("server") != server:
            if not is_alive(meta.get("server")):  # an earlier server run's leftover
                path.unlink(missing_ok=True)
            continue  # another live server sharing the directory: not ours, not ours to delete
        if server is not None and not is_alive(meta.get("worker")):
            log.info("expiring the window of dead worker %s", meta.get("worker"))
            path.unlink(missing_ok=True)
            continue
        parts.append(window)
    return parts


def acknowledge(directory: Path) -> float:
    """An operator saw the current alarm (`trainer drift --ack`): from now on the windows of
    this model version count only later requests, and each worker starts a fresh window at its
    next tick, so an alarm nobody acts on does not stay raised and a later shift raises anew."""
    at = time.time()
    atomic_write_bytes(Path(directory) / ACK_FILE, json.dumps({"acknowledged_at": at}).encode())
    return at


def acknowledged_at(directory: Path) -> float:
    """When the version's alarm was last acknowledged (0: never)."""
    try:
        return float(json.loads((Path(directory) / ACK_FILE).read_text())["acknowledged_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def merge_windows(directory: Path, capacity: int, server: str | None = None) -> dict[str, Any]:
    """The windows of one model version (see live_windows), newest `capacity` requests
    overall, none from before the last acknowledgement."""
    parts = live_windows(directory, server)
    names = parts[0]["meta"]["names"] if parts else []
    parts = [w for w in parts if w["meta"]["names"] == names]
    if not parts:
        return {"names": names, "features": np.zeros((0, len(names)), np.float32),
                "classes": np.zeros(0, np.int16), "workers": 0, "seen": 0}
    times = np.concatenate([w["times"] for w in parts])
    keep = np.argsort(times, kind="stable")[-capacity:]
    keep = keep[times[keep] > acknowledged_at(directory)]
    return {
        "names": names,
        "features": np.concatenate([w["features"] for w in parts])[keep],
        "classes": np.concatenate([w["classes"] for w in parts])[keep],
        "workers": len(parts),
        "seen": int(sum(w["meta"]["seen"] for w in parts)),
    }


def captured(directory: Path, server: str | None = None) -> dict[str, Any]:
    """Every window's captured texts with their rows (the last rows of each window)."""
    texts, rows, classes, times, names = [], [], [], [], None
    for w in live_windows(directory, server):
        k = len(w["texts"])
        if not k:
            continue
        names = names or w["meta"]["names"]
        if w["meta"]["names"] != names:
            continue
        texts += [str(t) for t in w["texts"]]
        rows.append(w["features"][-k:])
        classes.append(w["classes"][-k:])
        times.append(w["times"][-k:])
    width = len(names or [])
    return {"names": names or [], "texts": texts,
            "features": np.concatenate(rows) if rows else np.zeros((0, width), np.float32),
            "classes": np.concatenate(classes) if classes else np.zeros(0, np.int16),
            "times": np.concatenate(times) if times else np.zeros(0, np.float64)}


def summarize(names: list[str], features: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-feature n, mean, variance and quantiles, for humans and dashboards."""
    out = {}
    for i, name in enumerate(names):
        col = features[:, i].astype(np.float64)
        if len(col) == 0:
            out[name] = {"n": 0}
            continue
        q = np.quantile(col, [0.05, 0.25, 0.5, 0.75, 0.95])
        out[name] = {"n": len(col), "mean": round(float(col.mean()), 6),
                     "variance": round(float(col.var()), 6),
                     **{f"q{int(p * 100):02d}": round(float(v), 6)
                        for p, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), q)}}
    return out
