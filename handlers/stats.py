"""Per-worker bounded feature windows, persisted atomically so readers can merge all workers."""

import io
import json
import logging
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
SUFFIX = ".window.npz"


class FeatureWindow:
    """The last `capacity` requests' features: memory stays flat however much traffic comes."""

    def __init__(self, names: list[str], capacity: int) -> None:
        self.names = list(names)
        self.capacity = capacity
        self.rows: deque[np.ndarray] = deque(maxlen=capacity)
        self.classes: deque[int] = deque(maxlen=capacity)
        self.times: deque[float] = deque(maxlen=capacity)
        self.seen = 0

    def add(self, features: np.ndarray, classes: list[int]) -> None:
        now = time.time()
        for row, cls in zip(np.asarray(features, dtype=np.float32), classes):
            self.rows.append(row)
            self.classes.append(int(cls))
            self.times.append(now)
        self.seen += len(classes)

    def arrays(self) -> dict[str, np.ndarray]:
        width = len(self.names)
        return {
            "features": np.stack(self.rows) if self.rows else np.zeros((0, width), np.float32),
            "classes": np.asarray(self.classes, dtype=np.int16),
            "times": np.asarray(self.times, dtype=np.float64),
        }

    def save(self, path: Path, meta: dict[str, Any]) -> None:
        """Write beside, fsync, rename: a worker killed mid-write leaves the old file intact."""
        buf = io.BytesIO()
        np.savez(buf, **self.arrays(), meta=np.asarray(json.dumps(
            {**meta, "names": self.names, "seen": self.seen, "pid": os.getpid()})))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def read_window(path: Path) -> dict[str, Any] | None:
    """One worker's window, or None (with a warning) when the file is corrupt or half-written."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            data = {"features": z["features"], "classes": z["classes"], "times": z["times"]}
        if data["features"].shape != (len(data["classes"]), len(meta["names"])):
            raise ValueError("array shapes disagree")
        return {**data, "meta": meta}
    except Exception as e:  # noqa: BLE001 - any unreadable file is skipped, never fatal
        log.warning("skipping unreadable stats window %s: %s", path, e)
        return None


def merge_windows(directory: Path, capacity: int) -> dict[str, Any]:
    """All workers' windows of one model version, newest `capacity` requests overall."""
    parts = [w for p in sorted(Path(directory).glob(f"*{SUFFIX}")) if (w := read_window(p))]
    names = parts[0]["meta"]["names"] if parts else []
    parts = [w for w in parts if w["meta"]["names"] == names]
    if not parts:
        return {"names": names, "features": np.zeros((0, len(names)), np.float32),
                "classes": np.zeros(0, np.int16), "workers": 0, "seen": 0}
    times = np.concatenate([w["times"] for w in parts])
    keep = np.argsort(times, kind="stable")[-capacity:]
    return {
        "names": names,
        "features": np.concatenate([w["features"] for w in parts])[keep],
        "classes": np.concatenate([w["classes"] for w in parts])[keep],
        "workers": len(parts),
        "seen": int(sum(w["meta"]["seen"] for w in parts)),
    }


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
