"""Soak: hold a constant load on the real TorchServe and watch errors, p99 latency and the
workers' resident memory over time (it must stay flat: statistics windows are bounded).

    .venv/bin/python bench/soak.py                          # 10 minutes, 30 s slices
    .venv/bin/python bench/soak.py --seconds 20 --slice 5 --out /tmp/soak   # short mode

Load: `--threads` client threads on loopback, each sending real sentences of all four domains
back to back (closed loop: a constant number of requests in flight), for `--seconds`.
Memory: RSS of every worker process (and of the Java front end) sampled every second, the
largest sample of each slice reported. Results: OUT/soak.json and OUT/soak.png.
"""

import argparse
import itertools
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.fuzz import default_run_dir, good_texts, serve  # noqa: E402
from bench.stats_util import NO_LATENCIES, p50_p99_ms  # noqa: E402
from trainer.common.artifacts import atomic_savefig, atomic_write_json  # noqa: E402
from trainer.ops.client import TorchServeClient  # noqa: E402
from trainer.ops.server import TorchServe  # noqa: E402

MODEL = "soak"


class Load:
    """Client threads sending back to back; every request recorded as (start, end, status):
    the HTTP status, -1 for a 200 without a label, 0 when the call itself failed."""

    def __init__(self, client: TorchServeClient, texts: list[str], threads: int,
                 model: str = MODEL) -> None:
        self.client, self.model = client, model
        self.texts = itertools.cycle(texts)
        self.lock = threading.Lock()
        self.records: list[tuple[float, float, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                text = next(self.texts)
            start = time.perf_counter()
            try:
                resp = self.client.request("inference", "POST", f"/predictions/{self.model}",
                                           json={"text": text})
                status = resp.status_code
                if status == 200 and "label" not in resp.json():
                    status = -1
                problem = "" if status == 200 else f"{resp.status_code}: {resp.text[:200]}"
            except Exception as e:  # noqa: BLE001 - every failure counts, none stops the load
                status, problem = 0, repr(e)[:200]
            done = time.perf_counter()
            with self.lock:
                self.records.append((start, done, status))
                if problem and len(self.errors) < 20:
                    self.errors.append(problem)

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def rss_mb(server: TorchServe) -> dict[str, float]:
    """Resident memory of each worker ("worker <pid>") and of the Java front end."""
    out = {}
    for pid in server.worker_pids():
        try:
            out[f"worker {pid}"] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if proc.name() == "java":
                out["frontend"] = proc.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            continue
    return out


def slices(records: list[tuple[float, float, bool]], memory: list[tuple[float, dict]],
           t0: float, seconds: float, width: float) -> list[dict[str, Any]]:
    out = []
    for i in range(int(np.ceil(seconds / width))):
        lo, hi = t0 + i * width, t0 + min(seconds, (i + 1) * width)
        ms = np.array([m for t, m, _ in records if lo <= t < hi])
        errors = sum(1 for t, _, ok in records if lo <= t < hi and not ok)
        rss: dict[str, float] = {}
        for t, sample in memory:
            if lo <= t < hi:
                for k, v in sample.items():
                    rss[k] = max(rss.get(k, 0.0), v)
        out.append({
            "start_s": round(lo - t0, 1), "end_s": round(hi - t0, 1), "requests": len(ms),
            "errors": errors, "requests_per_s": round(len(ms) / (hi - lo), 2),
            **(p50_p99_ms(ms) if len(ms) else NO_LATENCIES),
            "max_ms": round(float(ms.max()), 1) if len(ms) else None,
            "rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
        })
    return out


def soak(server: TorchServe, client: TorchServeClient, seconds: float, width: float,
         threads: int, texts: list[str]) -> dict[str, Any]:
    workers_before = sorted(server.worker_pids())
    memory: list[tuple[float, dict]] = []
    with Load(client, texts, threads) as load:
        t0 = time.perf_counter()
        while (now := time.perf_counter()) < t0 + seconds:
            memory.append((now, rss_mb(server)))
            time.sleep(min(1.0, max(0.0, t0 + seconds - now)))
    records = [(end, 1000 * (end - start), status == 200)
               for start, end, status in load.records if end < t0 + seconds]
    parts = slices(records, memory, t0, seconds, width)
    workers_after = sorted(server.worker_pids())
    described = client.describe(MODEL)[0]["workers"]
    all_ms = np.array([m for _, m, _ in records])
    first, last = parts[min(1, len(parts) - 1)]["rss_mb"], parts[-1]["rss_mb"]
    return {
        "seconds": seconds, "slice_s": width, "threads": threads,
        "requests": len(records), "errors": sum(not ok for *_, ok in records),
        "error_samples": load.errors,
        "requests_per_s": round(len(records) / seconds, 2),
        **(p50_p99_ms(all_ms) if len(all_ms) else NO_LATENCIES),
        "rss_growth_mb": {k: round(last[k] - first[k], 1) for k in last if k in first},
        "rss_growth_note": "last slice minus the second one (the first holds the warm-up)",
        "workers_before": workers_before, "workers_after": workers_after,
        "workers_unchanged": workers_before == workers_after,
        "all_ready": all(w["status"] == "READY" for w in described),
        "slices": parts,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["slices"]
    mid = [(s["start_s"] + s["end_s"]) / 2 for s in parts]
    fig, (lat, mem) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key in ("p50_ms", "p99_ms"):
        lat.plot(mid, [s[key] for s in parts], marker="o", label=key.replace("_ms", ""))
    lat.set_ylabel("latency (ms)")
    lat.set_title(f"soak: {result['requests']} requests, {result['errors']} errors, "
                  f"{result['threads']} threads")
    lat.legend()
    for name in sorted({k for s in parts for k in s["rss_mb"]}):
        mem.plot(mid, [s["rss_mb"].get(name) for s in parts], marker=".", label=name)
    mem.set_ylabel("resident memory (MB)")
    mem.set_xlabel("time (s)")
    mem.legend(fontsize="small")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=600, help="load duration (default 600)")
    p.add_argument("--slice", type=float, default=30, help="seconds per report slice (30)")
    p.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--workers", type=int, default=1, help="TorchServe workers (default 1)")
    p.add_argument("--run", type=Path, help="run dir to serve (default: runs/sentiment/v1 "
                                            "if intact, else a quick MiniLM run)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args()
    if args.seconds <= 0 or args.slice <= 0 or not 1 <= args.threads <= 64:
        p.error("--seconds and --slice must be > 0, --threads in 1..64")

    run_dir = args.run or default_run_dir()
    texts = good_texts(200, max_chars=2000)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        os.environ["DRIFTSERVE_STATS_DIR"] = str(Path(tmp) / "stats")
        server = serve(run_dir, Path(tmp), MODEL, max_chars=2000)
        try:
            server.start()
            client = TorchServeClient(server.inference_url, server.management_url,
                                      server.key_file)
            client.register(f"{MODEL}.v1.mar", MODEL, workers=args.workers)
            result = soak(server, client, args.seconds, args.slice, args.threads, texts)
        finally:
            server.stop()
    result.update({"run_dir": str(run_dir), "workers": args.workers,
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
                   "python": platform.python_version()})
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "soak.json", result, sort_keys=False)
    plot(result, args.out / "soak.png")
    print(json.dumps({k: result[k] for k in ("requests", "errors", "p99_ms", "rss_growth_mb",
                                             "workers_unchanged")}))
    sys.exit(0 if result["errors"] == 0 and result["workers_unchanged"] else 1)


if __name__ == "__main__":
    main()
