"""Served throughput and latency: the product's handler against the stock TorchServe pattern.

    .venv/bin/python bench/serve.py            # MiniLM + LoRA r=16 -> bench/results/serve.*
    .venv/bin/python bench/serve.py --sweep    # batch size / delay / workers / threads -> serve-sweep.*
    .venv/bin/python bench/serve.py --quick    # tiny random BERT, few requests (smoke test)

Rows, all in one run on one model (MiniLM + a rank-16 LoRA on query/value) and one sentence set
(every test sentence of the built-in domains, at the lengths users send: the runtime truncates
at max_length 128; `--max-tokens 64` keeps the short ones only, as this bench did before);
served rows side by side by one real TorchServe (idle workers cost nothing), measured in turn:
  a  the product handler, adapter merged, the shipped ArchiveSettings defaults (found by --sweep)
  b  the stock pattern (bench/stock_handler.py): per-request tokenisation padded to max_length,
     TorchServe batch size 1, PEFT adapter unmerged
  c  the product handler serving the unmerged adapter (what merging buys)
  d  ModelRuntime.forward in this process, no server (the ceiling): at batch 1 (against
     concurrency 1) and at a's batch size (against concurrency 8 and 32), taking its turns in
     the same rounds as the served rows (best turn kept, as for them)
  e  a archived with dtype bfloat16: bf16 autocast where the CPU has native bf16
  f  d with dtype bfloat16, through the same ModelRuntime (the runtime's own bf16 path)
  g  a archived with --engine onnxruntime: the exported graph in ONNX Runtime
  h  d with the ONNX Runtime engine (ceiling of g)
  i  d with the model under torch.compile (inductor, dynamic shapes): measured, not served
     (full runs only; the smoke run skips its minute of compiling)
Latency at concurrency 1 (and the forward at batch 1) is also reported per length bucket.
Each product row records what its runtime reports computing in (describe()), so a CPU without
native bf16, where the runtime falls back to float32, shows in the results instead of passing
float32 off as bf16. Then a trial, in process only: attention implementation (sdpa, eager) x
torch threads (1, 2) per precision, at batch 1 and a's batch size; measured, not shipped.
The load generator is closed-loop: C client threads, each with one keep-alive connection, send
the next request as soon as the previous answer arrives. It runs on the same 2 cores as the
server, as a real sidecar client would; only ratios measured in the same run are meaningful.
"""

import argparse
import dataclasses
import http.client
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import random_lora  # noqa: E402
from handlers.features import REFERENCE_FILE  # noqa: E402
from handlers.manifest import write_manifest  # noqa: E402
from handlers.runtime import ModelRuntime, RuntimeSettings  # noqa: E402
from tests.models import tiny_base  # noqa: E402
from trainer.common.artifacts import (  # noqa: E402
    atomic_dir,
    atomic_savefig,
    atomic_write_json,
    atomic_write_text,
)
from trainer.data.reference import build_reference  # noqa: E402
from trainer.data.sources import LABELS, load_source  # noqa: E402
from trainer.model.lora import default_base_model, load_classifier, merge  # noqa: E402
from trainer.model.rundir import save_run  # noqa: E402
from trainer.ops.client import TorchServeClient  # noqa: E402
from trainer.ops.server import TorchServe  # noqa: E402
from trainer.packaging.archive import ArchiveSettings, build_archive  # noqa: E402
from trainer.packaging.onnx_export import add_onnx  # noqa: E402

ROWS = {"a": "product handler, merged, shipped settings",
        "b": "stock pattern: pad to max_length, batch 1, unmerged",
        "c": "product handler, unmerged adapter",
        "d": "in-process forward, no server (ceiling)",
        "e": "product handler, merged, shipped settings, dtype bfloat16",
        "f": "in-process forward, dtype bfloat16 (ceiling of e)",
        "g": "product handler, merged, shipped settings, engine onnxruntime",
        "h": "in-process forward, engine onnxruntime (ceiling of g)",
        "i": "in-process forward, torch.compile inductor (not served)"}
IN_PROCESS = ("d", "f", "h", "i")  # per batch: batch 1 against concurrency 1, a's size else
PAIRS = (("a", "b"), ("a", "c"), ("a", "d"), ("e", "a"), ("e", "b"), ("e", "f"), ("g", "a"),
         ("g", "e"), ("g", "h"), ("i", "d"), ("h", "i"))
BUCKETS = ((1, 32), (33, 64), (65, 128), (129, 10**9))  # tokens, before truncation at 128
BF16 = "bfloat16 autocast"  # what ModelRuntime.describe() reports when bf16 is really on
TRIAL_ATTN = ("sdpa", "eager")
TRIAL_THREADS = (1, 2)
DOMAINS = ("nyt", "movie", "amazon", "tweets")


@dataclasses.dataclass
class Scale:
    requests: dict[int, int]  # concurrency -> requests sent
    warmup: int  # requests sent (and dropped) to each model before measuring
    rounds: int = 1  # measurements per row and concurrency, alternating order; best kept
    max_tokens: int | None = None  # None: every sentence (the lengths users send)
    trial: tuple[int, int] = (150, 600)  # texts per trial cell at batch 1 and at a's batch size
    compile: bool = True  # row i


FULL = Scale(requests={1: 300, 8: 1200, 32: 1600}, warmup=128, rounds=3)
QUICK = Scale(requests={1: 16, 8: 48, 32: 64}, warmup=8, trial=(8, 16), compile=False)
SWEEP = Scale(requests={1: 200, 8: 800}, warmup=128)


def sentences(tokenizer: Any, max_tokens: int | None, seed: int = 0) -> list[str]:
    """Test sentences of every built-in domain (at most `max_tokens` tokens if set), shuffled."""
    texts = [ex.text for d in DOMAINS for ex in load_source(d, seed)[d].test]
    lengths = tokenizer(texts)["input_ids"]
    kept = [t for t, ids in zip(texts, lengths) if max_tokens is None or len(ids) <= max_tokens]
    random.Random(seed).shuffle(kept)
    return kept


def bucket_name(low: int, high: int) -> str:
    return f"{low}-{high} tokens" if high < 10**9 else f"> {low - 1} tokens (truncated)"


def by_length(latencies: list[tuple[int, float]], tokens: list[int]) -> dict[str, Any]:
    """p50/p95 per length bucket of (text index, seconds) pairs."""
    out = {}
    for low, high in BUCKETS:
        xs = [1000 * t for i, t in latencies if low <= tokens[i] <= high]
        if len(xs) >= 2:
            q = statistics.quantiles(xs, n=100, method="inclusive")
            out[bucket_name(low, high)] = {"requests": len(xs), "p50_ms": round(q[49], 2),
                                           "p95_ms": round(q[94], 2)}
    return out


def build_models(work: Path, base_dir: Path, texts: list[str]) -> tuple[Path, Path]:
    """The same LoRA model saved twice: merged as a run dir (what `trainer train` writes) and
    unmerged as base/ + PEFT adapter (bench.models.random_lora: untrained, same cost)."""
    labels = list(LABELS)
    model, tokenizer = load_classifier(base_dir, labels, new_head=True)
    adapter = work / "adapter"
    with atomic_dir(adapter) as tmp:
        model.save_pretrained(tmp / "base")  # before LoRA wraps its layers
        peft = random_lora(model)
        peft.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        merged = merge(peft)
        reference = build_reference(merged.eval(), tokenizer, texts[:200]).to_bytes()
        (tmp / REFERENCE_FILE).write_bytes(reference)
        write_manifest(tmp)
    run = save_run(work / "merged", merged, tokenizer, labels, {"kind": "bench"},
                   extra={REFERENCE_FILE: reference})
    return run, adapter


def merge_parity(run: Path, adapter: Path, texts: list[str]) -> float:
    """Largest |p_merged - p_unmerged| over the bench sentences' first batch."""
    settings = RuntimeSettings(monitor=False)
    merged = ModelRuntime.load(run, settings=settings).probabilities(texts[:64])
    unmerged = ModelRuntime.load(adapter, settings=dataclasses.replace(settings, merge=False))
    return float((merged - unmerged.probabilities(texts[:64])).abs().max())


def stock_archive(adapter: Path, store: Path, workers: int, threads: int) -> str:
    """torch-model-archiver over bench/stock_handler.py, TorchServe batch size 1."""
    config = {"batchSize": 1, "maxBatchDelay": 0, "minWorkers": workers, "maxWorkers": workers,
              "responseTimeout": 120, "handler": {"threads": threads}}
    with tempfile.TemporaryDirectory(prefix="stock-") as tmp:
        (Path(tmp) / "model-config.yaml").write_text(yaml.safe_dump(config))
        exe = Path(sys.executable).parent / "torch-model-archiver"
        subprocess.run([str(exe), "--model-name", "stock", "--version", "1",
                        "--handler", str(ROOT / "bench" / "stock_handler.py"),
                        "--extra-files", str(adapter), "--config-file", f"{tmp}/model-config.yaml",
                        "--export-path", str(store), "--force"], check=True, capture_output=True)
    return "stock.mar"


def drive(url: str, key: str, path: str, texts: list[str], concurrency: int,
          n: int, tokens: list[int] | None = None) -> dict[str, Any]:
    """Closed loop: `concurrency` threads with one keep-alive connection each, `n` requests.
    `tokens` (each text's length): latencies per length bucket too."""
    host = urlparse(url)
    counter, lock = itertools.count(), threading.Lock()
    latencies: list[tuple[int, float]] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        while (i := next(counter)) < n:
            body = json.dumps({"text": texts[i % len(texts)]})
            start = time.perf_counter()
            conn.request("POST", path, body, headers)
            resp = conn.getresponse()
            answer = resp.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append((i % len(texts), elapsed))
                if resp.status != 200:
                    errors.append(f"{resp.status} {answer[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = summarize([t for _, t in latencies], time.perf_counter() - start, concurrency,
                       len(errors))
    if tokens:
        result["by_length"] = by_length(latencies, tokens)
    if errors:
        result["first_error"] = errors[0]
        print(f"{len(errors)} errors, the first: {errors[0]}", file=sys.stderr)
    return result


def summarize(latencies: list[float], wall: float, concurrency: int, errors: int,
              items: int | None = None) -> dict[str, Any]:
    q = statistics.quantiles([1000 * x for x in latencies], n=100, method="inclusive")
    return {"concurrency": concurrency, "requests": items or len(latencies), "errors": errors,
            "throughput": round((items or len(latencies)) / wall, 1),
            "p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "p99_ms": round(q[98], 2)}


def compute_of(described: dict[str, Any]) -> str:
    """What a runtime computes in, from its own describe(): "bfloat16 autocast", or its weights'
    dtype (float32 also after the runtime's fallback on a CPU without native bf16), and the
    engine where it is not PyTorch."""
    what = described.get("compute") or described["dtype"]
    engine = described.get("engine", "torch")
    return what if engine == "torch" else f"{what} ({engine})"


def load_runtime(run: Path, dtype: str, threads: int, engine: str = "torch") -> ModelRuntime:
    """The handler's own ModelRuntime, monitor off: bf16 goes through its autocast path and its
    fallback, exactly as served."""
    return ModelRuntime.load(run, settings=RuntimeSettings(dtype=dtype, threads=threads,
                                                           monitor=False, engine=engine))


def in_process(runtime: ModelRuntime, texts: list[str], batch_size: int, n: int,
               warmup: int, tokens: list[int] | None = None) -> dict[str, Any]:
    """Forward only (no monitor, no server), batches of `batch_size` back to back; at batch 1
    with `tokens`, per length bucket too."""
    starts = range(0, n, batch_size)
    batches = [[texts[(i + j) % len(texts)] for j in range(batch_size)] for i in starts]
    for _ in range(0, warmup, batch_size):
        runtime.forward(batches[0])
    times = []
    for batch in batches:
        start = time.perf_counter()
        runtime.forward(batch)
        times.append(time.perf_counter() - start)
    row = summarize(times, sum(times), batch_size, 0, items=len(batches) * batch_size)
    if tokens and batch_size == 1:
        row["by_length"] = by_length([(i % len(texts), t) for i, t in zip(starts, times)], tokens)
    row["latency_is"] = "per batch"
    row["compute"] = compute_of(runtime.describe())
    return row


def trial(run: Path, texts: list[str], dtypes: tuple[str, ...], batch_size: int,
          sc: Scale) -> dict[str, Any]:
    """Attention implementation x torch threads of the in-process forward, per precision: which
    wins is measured here, not shipped (the runtime keeps its default). Rounds alternate order,
    best kept per cell; torch's thread count is restored after (rows d/f ran before)."""
    default_threads, shipped = torch.get_num_threads(), ""
    cells = list(itertools.product(dtypes, TRIAL_THREADS, TRIAL_ATTN))
    best: dict[tuple[str, int, str], dict[str, Any]] = {}
    try:
        for round_ in range(sc.rounds):
            for dtype, threads, attn in (cells if round_ % 2 == 0 else cells[::-1]):
                runtime = load_runtime(run, dtype, threads)
                shipped = runtime.model.config._attn_implementation  # the runtime's choice today
                # what from_pretrained(attn_implementation=) sets: BERT reads it on every call
                runtime.model.set_attn_implementation(attn)
                row = best.setdefault((dtype, threads, attn), {
                    "dtype": dtype, "compute": compute_of(runtime.describe()),
                    "threads": threads, "attn": attn})
                for size, n in zip((1, batch_size), sc.trial):
                    x = in_process(runtime, texts, size, n, sc.warmup)
                    if x["throughput"] > row.get(f"batch {size}", {}).get("throughput", 0):
                        row[f"batch {size}"] = {k: x[k] for k in ("throughput", "p50_ms", "p95_ms")}
    finally:
        torch.set_num_threads(default_threads)
    rows = list(best.values())
    today = {r["dtype"]: r for r in rows if (r["attn"], r["threads"]) == (shipped, default_threads)}

    def winner(dtype: str, key: str) -> str:
        """The fastest cell, and its speed-up over what the runtime does today (if trialled)."""
        r = max((r for r in rows if r["dtype"] == dtype), key=lambda r: r[key]["throughput"])
        now = today.get(dtype)
        gain = (f" ({r[key]['throughput'] / now[key]['throughput']:.2f}x the runtime's "
                f"{shipped}, threads {default_threads})" if now else "")
        return f"{r['attn']}, threads {r['threads']}{gain}"

    return {"runtime_attn": shipped, "default_threads": default_threads,
            "batch_sizes": [1, batch_size], "rows": rows,
            "best": {f"{dtype}, batch {size}": winner(dtype, f"batch {size}")
                     for dtype in dtypes for size in (1, batch_size)}}


def serve_rows(server: TorchServe, models: dict[str, tuple[str, int]], texts: list[str],
               sc: Scale, describe: tuple[str, ...] = (),
               forward: dict[str, ModelRuntime] | None = None,
               batch_size: int = 8, tokens: list[int] | None = None
               ) -> dict[str, list[dict[str, Any]]]:
    """All models registered side by side (idle workers cost no CPU) and warmed; then each
    concurrency drives every model in turn, `sc.rounds` times in alternating order, keeping the
    best round per row (errors of every round are kept), so that warm-up of the JVM and
    background noise favour no row. Rows in `describe` (product handlers) carry what their
    worker reports computing in. `forward` rows (in process, this machine's load changes by
    tens of % within a run) take their turns in the same rounds: batch 1 at concurrency 1,
    `batch_size` at the others, the best of all those turns kept. `tokens`: each text's
    length, for latencies per length bucket."""
    client = TorchServeClient(server.inference_url, server.management_url, server.key_file)
    key = json.loads(server.key_file.read_text())["inference"]["key"]
    names = {row: Path(mar).name.split(".")[0] for row, (mar, _) in models.items()}
    forward = forward or {}
    order = list(models) + list(forward)
    described: dict[str, dict[str, str]] = {}
    # (row, concurrency) for a served row, (row, batch size) for an in-process one -> best turn
    best: dict[tuple[str, int], dict[str, Any]] = {}

    def measure(row: str, concurrency: int, n: int) -> tuple[int, dict[str, Any]]:
        if row in forward:
            size = 1 if concurrency == 1 else batch_size
            return size, in_process(forward[row], texts, size, n, sc.warmup, tokens)
        return concurrency, {**drive(server.inference_url, key, f"/predictions/{names[row]}",
                                     texts, concurrency, n, tokens), **described.get(row, {})}

    try:
        for row, (mar, workers) in models.items():
            client.register(mar, names[row], workers=workers)
            drive(server.inference_url, key, f"/predictions/{names[row]}", texts, 8, sc.warmup)
            if row in describe:
                worker = client.describe(names[row], customized=True)[0]["customizedMetadata"]
                described[row] = {"compute": compute_of(worker)}
        for concurrency, n in sc.requests.items():
            for round_ in range(sc.rounds):
                for row in (order if round_ % 2 == 0 else order[::-1]):
                    slot, result = measure(row, concurrency, n)
                    print(f"{row} c={concurrency:>2}: {result['throughput']:7.1f} req/s  p50 "
                          f"{result['p50_ms']:6.1f} ms  p95 {result['p95_ms']:6.1f} ms  "
                          f"errors {result['errors']}", file=sys.stderr)
                    if result["errors"]:
                        print(server.log_tail(30), file=sys.stderr)
                    kept = best.get((row, slot))
                    errors = result["errors"] + (kept["errors"] if kept else 0)
                    if kept is None or result["throughput"] > kept["throughput"]:
                        best[row, slot] = result
                    best[row, slot]["errors"] = errors
        rows = {row: [best[row, c] for c in sc.requests] for row in models}
        rows.update({row: [best[row, 1], best[row, batch_size]] for row in forward})
    finally:
        for name in names.values():
            try:
                client.unregister(name)
            except Exception:  # noqa: BLE001 - the server is stopped next anyway
                pass
    return rows


def matched(rows: dict[str, list[dict[str, Any]]], row: str, concurrency: int) -> dict[str, Any]:
    """`row`'s result to set against a served row at `concurrency`: for an in-process row, batch
    1 against concurrency 1 and a's batch size against the rest."""
    if row in IN_PROCESS:
        return rows[row][0] if concurrency == 1 else rows[row][-1]
    return next(x for x in rows[row] if x["concurrency"] == concurrency)


def ratios(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[int, float]]:
    return {f"{num}/{den}": {x["concurrency"]: round(
        x["throughput"] / matched(rows, den, x["concurrency"])["throughput"], 2) for x in rows[num]}
        for num, den in PAIRS if num in rows and den in rows}


def fell_back(rows: dict[str, list[dict[str, Any]]]) -> bool:
    """e or f computed in float32: the runtime's fallback on a CPU without native bf16."""
    return any(x["compute"] != BF16 for row in ("e", "f") for x in rows[row])


def goals(rows: dict[str, list[dict[str, Any]]], r: dict[str, dict[int, float]]) -> list[str]:
    """The issue's goals, each met or MISSED with its numbers. bf16 goals cannot be met by rows
    that the runtime served in float32."""
    def vs(num: str, den: str, goal: float, c: int = 8) -> tuple[str, bool, str]:
        x, y = matched(rows, num, c), matched(rows, den, c)
        return (f"{num} >= {goal}x {den} at concurrency {c}", r[f"{num}/{den}"][c] >= goal,
                f"{r[f'{num}/{den}'][c]}x: {x['throughput']} vs {y['throughput']} texts/s")

    def p95(row: str, forward: str, goal: float) -> tuple[str, bool, str]:
        x = matched(rows, row, 1)
        return (f"{row} p95 <= {goal} ms at concurrency 1", x["p95_ms"] <= goal,
                f"{x['p95_ms']} ms; the forward alone at batch 1 ({forward}): p95 "
                f"{rows[forward][0]['p95_ms']} ms")

    no_bf16 = fell_back(rows)
    note = "; e/f ran in float32, this CPU has no native bf16" if no_bf16 else ""
    lines = [f"- {'met' if ok else 'MISSED'}: float32: {what} (measured {v})"
             for what, ok, v in (vs("a", "b", 2.5), vs("a", "d", 0.8), p95("a", "d", 20))]
    return lines + [f"- {'met' if ok and not no_bf16 else 'MISSED'}: bf16: {what} (measured "
                    f"{v}{note})" for what, ok, v in (vs("e", "a", 1.8), p95("e", "f", 12),
                                                      vs("e", "f", 0.8), vs("e", "b", 5))]


SERVED_ENGINES = {"a": "d", "e": "f", "g": "h"}  # served row -> the same runtime in process
ENGINE_SPEEDUP, ENGINE_P50_MS, ENGINE_P95_MS, ENGINE_SERVED_SHARE = 1.3, 5.0, 8.0, 0.75  # #30


def engine_goals(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """#30's goals for the fastest served engine (a, e or g by throughput at concurrency 8)."""
    served = [row for row in SERVED_ENGINES if row in rows]
    best = max(served, key=lambda row: matched(rows, row, 8)["throughput"])
    fast, e, one = matched(rows, best, 8), matched(rows, "e", 8), matched(rows, best, 1)
    ceiling = matched(rows, SERVED_ENGINES[best], 8)
    checks = [
        (f"fastest served engine ({best}: {fast['compute']}) >= {ENGINE_SPEEDUP}x e at "
         "concurrency 8", fast["throughput"] >= ENGINE_SPEEDUP * e["throughput"],
         f"{fast['throughput'] / e['throughput']:.2f}x: {fast['throughput']} vs "
         f"{e['throughput']} texts/s"),
        (f"{best} p50 <= {ENGINE_P50_MS} ms and p95 <= {ENGINE_P95_MS} ms at concurrency 1",
         one["p50_ms"] <= ENGINE_P50_MS and one["p95_ms"] <= ENGINE_P95_MS,
         f"p50 {one['p50_ms']} ms, p95 {one['p95_ms']} ms; the forward alone at batch 1 "
         f"({SERVED_ENGINES[best]}): p50 {matched(rows, SERVED_ENGINES[best], 1)['p50_ms']} ms"),
        (f"{best} served >= {ENGINE_SERVED_SHARE}x its own in-process forward "
         f"({SERVED_ENGINES[best]}) at concurrency 8",
         fast["throughput"] >= ENGINE_SERVED_SHARE * ceiling["throughput"],
         f"{fast['throughput'] / ceiling['throughput']:.2f}x: {fast['throughput']} vs "
         f"{ceiling['throughput']} texts/s")]
    return [f"- {'met' if ok else 'MISSED'}: {what} (measured {v})" for what, ok, v in checks]


def length_markdown(rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Latency per length bucket: served rows at concurrency 1, in-process ones at batch 1."""
    lines = ["| row | length | requests | p50 ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for row, results in rows.items():
        x = results[0]  # concurrency 1 / batch 1 comes first
        for bucket, b in x.get("by_length", {}).items():
            lines.append(f"| {row} | {bucket} | {b['requests']} | {b['p50_ms']} | {b['p95_ms']} |")
    return lines


def trial_markdown(t: dict[str, Any]) -> list[str]:
    b1, bn = (f"batch {b}" for b in t["batch_sizes"])
    lines = [f"Trial, in process (measured, not shipped: the runtime uses attention "
             f"{t['runtime_attn']} and torch's default of {t['default_threads']} threads):", "",
             f"| precision | threads | attention | {b1} texts/s | {b1} p95 ms | {bn} texts/s "
             f"| {bn} p95 ms |", "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {x['compute']} | {x['threads']} | {x['attn']} | {x[b1]['throughput']} | "
              f"{x[b1]['p95_ms']} | {x[bn]['throughput']} | {x[bn]['p95_ms']} |" for x in t["rows"]]
    return lines + ["", "Fastest: " + "; ".join(f"{k}: {v}" for k, v in t["best"].items()) + "."]


def markdown(result: dict[str, Any]) -> str:
    meta, rows, r = result["meta"], result["rows"], result["ratios"]
    limit = (f"<= {meta['max_tokens']} tokens" if meta["max_tokens"] else
             "every length, truncated at 128 tokens")
    lines = [f"{meta['model']}, {meta['sentences']} sentences of the built-in data ({limit}, "
             f"mean {meta['mean_tokens']:.1f}; by length: " + ", ".join(
                 f"{k} {v:.1%}" for k, v in meta["length_mix"].items()) + "); TorchServe 0.12 "
             f"on {meta['cpus']} CPU cores ({meta['cpu']}), load generator on the same cores; "
             f"settings of a: {meta['settings_a']}.", "",
             "Computed in, as each runtime reports it (describe()): " + ", ".join(
                 f"{row} {c}" for row, c in meta["compute"].items()) + f". bf16: {meta['bf16']}.",
             "", "| row | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row, results in rows.items():
        for x in results:
            conc = f"batch {x['concurrency']}" if row in IN_PROCESS else x["concurrency"]
            lines.append(f"| {row}: {ROWS[row]} | {conc} | {x['requests']} | {x['throughput']} "
                         f"| {x['p50_ms']} | {x['p95_ms']} | {x['p99_ms']} | {x['errors']} |")
    lines += ["", "| ratio (throughput) | " + " | ".join(f"c={c}" for c in r["a/b"]) + " |",
              "|---" + "|---:" * len(r["a/b"]) + "|"]
    lines += [f"| {k} | " + " | ".join(f"{by[c]:.2f}x" if c in by else "—" for c in r["a/b"])
              + " |" for k, by in r.items()]  # in process against in process: batch 1 and 8
    lines += ["", f"Merged vs unmerged probabilities: max |diff| {meta['merge_parity']:.1e}.",
              "", "Goals (CPU):", *goals(rows, r), "", "Goals of the engine choice (#30):",
              *engine_goals(rows), "", "Latency by length (concurrency 1; in process, batch 1):",
              "", *length_markdown(rows), "", *trial_markdown(result["trial"]), ""]
    return "\n".join(lines)


def png(path: Path, rows: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    concs = [x["concurrency"] for x in rows["a"]]
    served = [row for row in "abceg" if row in rows]
    width = 0.8 / len(served)
    for k, row in enumerate(served):
        xs = [i + (k - (len(served) - 1) / 2) * width for i in range(len(concs))]
        left.bar(xs, [x["throughput"] for x in rows[row]], width, label=f"{row}: {ROWS[row]}")
        right.bar(xs, [x["p95_ms"] for x in rows[row]], width, label=row)
    for row, ls in zip([r for r in IN_PROCESS if r in rows], ("--", ":", "-.", (0, (1, 4)))):
        left.axhline(rows[row][-1]["throughput"], color="black", ls=ls, lw=1,
                     label=f"{row}: ceiling at batch {rows[row][-1]['concurrency']}")
    for ax, title in ((left, "throughput (req/s)"), (right, "p95 latency (ms)")):
        ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        ax.set_title(title, fontsize=9)
    right.set_yscale("log")
    left.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def start_server(work: Path) -> TorchServe:
    return TorchServe(work / "ts", work / "store", ROOT / "config.properties", ports="free").start()


def run_bench(sc: Scale, base_dir: Path, work: Path, out: Path, stem: str) -> dict[str, Any]:
    settings = ArchiveSettings()
    bf16 = dataclasses.replace(settings, dtype="bfloat16")  # `trainer archive --dtype bfloat16`
    onnx = dataclasses.replace(settings, engine="onnxruntime")  # `--engine onnxruntime`
    texts, run, adapter = prepare(base_dir, work, sc)
    store = work / "store"
    onnx_run = work / "onnx-run"  # the run dir plus the model.onnx the archive ships
    shutil.copytree(run, onnx_run)
    add_onnx(onnx_run, settings.max_length)
    forward = {"d": load_runtime(run, settings.dtype, settings.threads),
               "f": load_runtime(run, bf16.dtype, settings.threads),
               "h": load_runtime(onnx_run, onnx.dtype, onnx.threads, onnx.engine)}
    if sc.compile:
        forward["i"] = load_runtime(run, settings.dtype, settings.threads)
        forward["i"].model = torch.compile(forward["i"].model, dynamic=True)
        for size in (1, settings.batch_size, 3):  # compile now, not inside a measured turn
            forward["i"].forward(texts[:size])
    dtypes = (settings.dtype,) + ((bf16.dtype,) if forward["f"].cpu_autocast else ())
    trial_result = trial(run, texts, dtypes, settings.batch_size, sc)
    build_archive(run, "product", "1", store, settings, allow_weak=True)  # speed, not accuracy
    build_archive(adapter, "unmerged", "1", store, dataclasses.replace(settings, merge=False),
                  allow_weak=True)
    build_archive(run, "bf16", "1", store, bf16, allow_weak=True)
    build_archive(run, "onnx", "1", store, onnx, allow_weak=True)
    stock = stock_archive(adapter, store, settings.min_workers, settings.threads)
    models = {"a": ("product.v1.mar", settings.min_workers), "b": (stock, settings.min_workers),
              "c": ("unmerged.v1.mar", settings.min_workers), "e": ("bf16.v1.mar", bf16.min_workers),
              "g": ("onnx.v1.mar", onnx.min_workers)}
    tokenizer = AutoTokenizer.from_pretrained(run, local_files_only=True)
    tokens = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    server = start_server(work)
    try:
        served = serve_rows(server, models, texts, sc, describe=("a", "c", "e", "g"),
                            forward=forward, batch_size=settings.batch_size, tokens=tokens)
    finally:
        server.stop()
    rows = {row: served[row] for row in ROWS if row in served}
    failed = [f"{row} c={x['concurrency']}: {x['first_error']}" for row, xs in rows.items()
              for x in xs if x["errors"]]
    if failed:  # a row that answered errors measured nothing worth reporting
        raise SystemExit("requests failed, no results written:\n" + "\n".join(failed))
    meta = {"model": "tiny random BERT" if "tiny" in str(base_dir) else "all-MiniLM-L6-v2 + LoRA r=16",
            "sentences": len(texts), "max_tokens": sc.max_tokens,
            "mean_tokens": statistics.fmean(min(n, settings.max_length) for n in tokens),
            "length_mix": {bucket_name(lo, hi): sum(lo <= n <= hi for n in tokens) / len(tokens)
                           for lo, hi in BUCKETS},
            "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "settings_a": {
                k: v for k, v in dataclasses.asdict(settings).items()
                if k in ("batch_size", "max_batch_delay", "min_workers", "threads")},
            "requests": sc.requests, "merge_parity": merge_parity(run, adapter, texts),
            "compute": {row: xs[0]["compute"] for row, xs in rows.items() if "compute" in xs[0]},
            "bf16": ("FELL BACK: the runtime served e and ran f in float32 (this CPU has no native "
                     "bf16), so e/f are float32 numbers" if fell_back(rows) else
                     "native (bf16 autocast in e and f)")}
    result = {"meta": meta, "rows": rows, "ratios": ratios(rows), "trial": trial_result}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{stem}.json", result)
    atomic_write_text(out / f"{stem}.md", markdown(result))
    png(out / f"{stem}.png", rows)
    print(markdown(result))
    return result


def prepare(base_dir: Path, work: Path, sc: Scale) -> tuple[list[str], Path, Path]:
    tokenizer = AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    texts = sentences(tokenizer, sc.max_tokens)
    run, adapter = build_models(work, base_dir, texts)
    return texts, run, adapter


SWEEP_GRID = [  # (batch size, max batch delay ms, workers, threads per worker; 0 = torch default)
    (1, 0, 1, 0), (8, 0, 1, 0),
    (4, 1, 1, 0), (8, 1, 1, 0), (16, 1, 1, 0),
    (4, 2, 1, 0), (8, 2, 1, 0), (16, 2, 1, 0),
    (8, 5, 1, 0), (8, 2, 1, 1), (8, 2, 2, 1),
]


def run_sweep(sc: Scale, base_dir: Path, work: Path, out: Path) -> list[dict[str, Any]]:
    """Product handler only, one setting per registration; the shipped default comes from here."""
    texts, run, _ = prepare(base_dir, work, sc)
    store, models = work / "store", {}
    for bs, delay, workers, threads in SWEEP_GRID:
        name = f"bs{bs}_d{delay}_w{workers}_t{threads}"
        build_archive(run, name, "1", store, ArchiveSettings(
            batch_size=bs, max_batch_delay=delay, min_workers=workers, max_workers=workers,
            threads=threads), allow_weak=True)
        models[name] = (f"{name}.v1.mar", workers)
    server = start_server(work)
    try:
        rows = serve_rows(server, models, texts, sc)
    finally:
        server.stop()
    table = [{"setting": k, **{f"c{x['concurrency']}_{m}": x[m] for x in v
                               for m in ("throughput", "p95_ms")}} for k, v in rows.items()]
    atomic_write_json(out / "serve-sweep.json", {"requests": sc.requests, "rows": table})
    head = list(table[0])
    md = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    md += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in table]
    atomic_write_text(out / "serve-sweep.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random BERT, few requests")
    p.add_argument("--sweep", action="store_true", help="tune the product handler's settings")
    p.add_argument("--max-tokens", type=int, help="keep only sentences of at most this many "
                   "tokens (default: every length, as users send them)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        os.environ["DRIFTSERVE_STATS_DIR"] = str(work / "stats")
        base = tiny_base(work / "tiny-bert") if args.quick else default_base_model()
        sc = dataclasses.replace(QUICK if args.quick else SWEEP if args.sweep else FULL,
                                 max_tokens=args.max_tokens)
        if args.sweep:
            run_sweep(sc, base, work, args.out)
        else:
            run_bench(sc, base, work, args.out, "serve-quick" if args.quick else "serve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
