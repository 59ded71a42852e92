"""Traffic monitor: features into this worker's window, persisted and drift-tested in the
background, merged across all workers of the model version for describe and `trainer drift`."""

import atexit
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from handlers import frozen
from handlers.bins import BINS, bin_counts, bin_edges
from handlers.calibration import estimated_accuracy, estimator
from handlers.drift import DriftSettings, drift_test
from handlers.errors import HandlerError
from handlers.features import Reference, feature_matrix
from handlers.stats import (
    SUFFIX,
    FeatureWindow,
    acknowledged_at,
    current_server,
    merge_windows,
    save_window,
    summarize,
)

log = logging.getLogger(__name__)


def class_shares(classes: np.ndarray, labels: list[str]) -> dict[str, float]:
    counts = np.bincount(np.asarray(classes, dtype=int), minlength=len(labels))
    total = max(1, int(counts.sum()))
    return {label: round(int(c) / total, 4) for label, c in zip(labels, counts)}


def remove_on_sigterm(remove: Callable[[], None]) -> None:
    """A stopping server SIGTERMs its workers, and SIGTERM's default action skips atexit: the
    window (and any captured text) would outlive the server. Remove it, then end as SIGTERM
    would have (or as the handler installed before ours decides)."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        remove()
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)


class TrafficMonitor:
    def __init__(self, reference: Reference, directory: Path, capacity: int,
                 persist_every_s: float, drift: DriftSettings, worker_id: str,
                 capture: int = 0, trusted: dict[str, Any] | None = None) -> None:
        self.archive_reference = reference
        self.reference = reference
        self.reference_input = reference.as_test_input()  # novelty calibration fitted once
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)  # served texts: owner only
        self.trusted = trusted  # keys a frozen reference's manifest must be signed by (or None)
        self.frozen: dict[str, Any] | None = None  # the adopted frozen reference's manifest
        self.frozen_refused: str | None = None  # why the newest frozen reference was refused
        self._frozen_stamp: tuple[int, int] | None = None
        self.path = self.directory / f"{worker_id}{SUFFIX}"
        self.capacity = capacity
        self.drift = drift
        self.capture = capture
        self.server = current_server()  # this worker's server run never changes
        self.window = FeatureWindow(reference.names, capacity, capture)
        self._acknowledged = acknowledged_at(self.directory)  # an older ack: already fresh
        self.lock = threading.Lock()
        self.last_result: dict[str, Any] | None = None
        self._dirty = False
        self._checked_at_seen = 0  # this worker's request count at its last scheduled check
        self.edges = bin_edges(reference.features)  # fixed by the archive: alike on replicas
        self.adopt_frozen()
        self.bins = np.zeros((len(reference.names), BINS), np.int64)  # since the last drain
        # Run on this thread each tick that has bin counts to drain: the handler's flush of its
        # bin counters, so a request never pays for one metrics line per feature.
        self.export: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(persist_every_s,), daemon=True,
                                        name="traffic-monitor")
        self._thread.start()
        atexit.register(self.remove)  # a clean exit leaves no window behind
        remove_on_sigterm(self.remove)  # and so does a stop: TorchServe's, or `serve stop`

    def observe(self, pooled: np.ndarray, probs: np.ndarray, tokens: np.ndarray,
                texts: list[str] | None = None) -> None:
        rows = feature_matrix(pooled, probs, tokens, self.reference.projection)
        counts = bin_counts(rows, self.edges)
        with self.lock:
            self.window.add(rows, np.asarray(probs).argmax(axis=1).tolist(), texts)
            self.bins += counts
            self._dirty = True

    def drain_bins(self) -> np.ndarray:
        """(features, BINS) counts observed since the last drain, for the metrics exporter."""
        with self.lock:
            out, self.bins = self.bins, np.zeros_like(self.bins)
        return out

    def persist(self) -> None:
        with self.lock:
            arrays, seen = self.window.arrays(), self.window.seen
            self._dirty = False
        save_window(self.path, arrays, self.window.names, seen, {"capacity": self.capacity})

    def merged(self) -> dict[str, Any]:
        return merge_windows(self.directory, self.capacity, self.server)

    def check(self, decision_only: bool = False) -> dict[str, Any]:
        """`decision_only`: for the metrics alone (see drift_test), a third of the full cost."""
        merged = self.merged()
        window = {"classes": merged["classes"],
                  "features": {n: merged["features"][:, i] for i, n in enumerate(merged["names"])}}
        result = drift_test(self.reference_input, window, self.drift,
                            decision_only=decision_only)
        probs = merged["features"][:, [merged["names"].index(f"p_{label}")
                                       for label in self.reference.labels]] \
            if merged["names"] else np.zeros((0, len(self.reference.labels)))
        estimate = estimated_accuracy(probs, self.reference.temperature,
                                      self.reference.accuracy_fit)
        result["estimated_accuracy"] = None if estimate is None else round(estimate, 4)
        result["checked_at"] = time.time()
        self.last_result = result
        return result

    def _loop(self, every: float) -> None:
        """Persist when there is news; check at most once per `check_every` of this worker's
        requests (the false-alarm bound counts checks, not seconds); export undrained bin counts
        (a describe persists too, so those are not tied to this loop's persist)."""
        while not self._stop.wait(every):
            try:
                self.adopt_frozen()
                self.fresh_window_after_ack()
                if self._dirty:
                    self.persist()
                    seen = self.window.seen
                    if seen - self._checked_at_seen >= self.drift.check_every:
                        self._checked_at_seen = seen
                        self.check(decision_only=True)  # the gauges need no more
                if self.export is not None and self.bins.any():
                    self.export()
            except Exception:  # noqa: BLE001 - monitoring must never take serving down
                log.exception("traffic monitor update failed")

    def adopt_frozen(self) -> None:
        """A new frozen reference in the statistics directory (handlers.frozen) replaces the
        current one, with a fresh window; one that fails its checks is refused, logged with the
        file named, shown by describe, and the current reference kept."""
        stamp = frozen.manifest_stamp(self.directory)
        if stamp is None or stamp == self._frozen_stamp:
            return
        self._frozen_stamp = stamp
        try:
            found = frozen.load(self.directory, self.trusted)
            if found is None:
                return
            reference, manifest = found
            frozen.compatible(reference, self.archive_reference, manifest["file"])
        except (HandlerError, OSError) as e:
            self.frozen_refused = str(e)
            log.error("%s", e)
            return
        test_input = reference.as_test_input()
        with self.lock:
            self.reference, self.reference_input = reference, test_input
            self.frozen, self.frozen_refused = manifest, None
            self.window = FeatureWindow(self.reference.names, self.capacity, self.capture)
            self._checked_at_seen, self._dirty = 0, True
            self._acknowledged = acknowledged_at(self.directory)  # the freeze's: already fresh
        log.info("drift reference: %s (%d frozen requests)", manifest["file"],
                 manifest["requests"])

    def fresh_window_after_ack(self) -> None:
        """A new acknowledgement (handlers.stats.acknowledge): drop the window and its captured
        texts and count requests from zero, so the next checks see only later traffic."""
        at = acknowledged_at(self.directory)
        if at <= self._acknowledged:
            return
        with self.lock:
            if at <= self._acknowledged:  # another caller restarted it meanwhile
                return
            self.window = FeatureWindow(self.reference.names, self.capacity, self.capture)
            self._acknowledged, self._checked_at_seen, self._dirty = at, 0, True
        self.check(decision_only=True)  # the gauges the next request exports: no alarm

    def close(self) -> None:
        self._stop.set()

    def remove(self) -> None:
        """Stop persisting and delete this worker's window."""
        self.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)  # a save in flight would bring the file back
        self.path.unlink(missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """Statistics over the recent window of ALL workers of this model version."""
        self.persist()
        merged = self.merged()
        names, labels = merged["names"], self.reference.labels
        drift = self.check()
        features = summarize(names, merged["features"])
        return {
            "workers": merged["workers"],
            "window_size": int(len(merged["classes"])),
            "window_capacity_per_worker": self.capacity,
            "requests_seen": merged["seen"],
            "features": features,
            "class_distribution": class_shares(merged["classes"], labels),
            "confidence": features.get("confidence", {}),
            # Accuracy without labels (handlers.calibration), by the reference's method.
            "estimated_accuracy": drift["estimated_accuracy"],
            "estimator": estimator(self.reference.accuracy_fit),
            # Where `trainer sample` reads the captured texts (on this host), and how many.
            "stats_dir": str(self.directory),
            "capture_per_worker": self.capture,
            "temperature": self.reference.temperature,
            "reference": {
                "source": "frozen served traffic" if self.frozen else "archive (held-out data)",
                **({"frozen": self.frozen} if self.frozen else {}),
                **({"frozen_refused": self.frozen_refused} if self.frozen_refused else {}),
                "size": int(len(self.reference.classes)),
                "domains": self.reference.domain_sizes(),
                "features": summarize(self.reference.names, self.reference.features),
                "class_distribution": class_shares(self.reference.classes, labels),
            },
            "drift": drift,
        }
