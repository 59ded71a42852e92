"""The GPU path, checked and timed: ModelRuntime on cuda:0 in float32/float16/bfloat16 at batch
sizes 1 to 512, logits against the CPU float32 result, peak memory, and herding at n = 100,000.
The ONNX Runtime engine (`trainer archive --engine onnxruntime`) gets the same row through
the CUDA execution provider where the installed onnxruntime has it (the onnxruntime-gpu wheel;
the CPU wheel that `make setup-onnx` pins has not, and the row then says so).

    bench/gpu.sh                          # = python bench/gpu.py; writes bench/results/gpu-<card>.*
    python bench/gpu.py --model DIR       # another base model directory (default: MiniLM wheel)

Without CUDA it exits at once (status 2) and measures nothing. Needs torch, transformers and peft
only: sentences come from the built-in data when its package is installed, else synthetic ones
of the same length range. Well under 6 minutes on one H100; prints a short table last.
"""

import argparse
import platform
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import random_lora  # noqa: E402
from handlers.manifest import write_manifest  # noqa: E402
from handlers.runtime import ModelRuntime, RuntimeSettings  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.learning.herding import herding_order  # noqa: E402
from trainer.model.lora import load_classifier, merge  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
DTYPES = ["float32", "float16", "bfloat16"]
HALF_TOLERANCE = 1e-2  # relative error of half-precision logits against CPU float32


def texts_for_bench(n: int = 512) -> tuple[list[str], str]:
    try:
        from trainer.data.sources import load_source

        texts = [ex.text for d in ("nyt", "movie", "amazon", "tweets")
                 for ex in load_source(d, 0)[d].test]
        source = "built-in data"
    except Exception as e:  # the data package is not on the GPU host
        words = "the market film product service great awful quite never really good bad".split()
        rng = random.Random(0)
        texts = [" ".join(rng.choices(words, k=rng.randint(4, 48))) for _ in range(n)]
        source = f"synthetic ({type(e).__name__}: built-in data not installed)"
    random.Random(0).shuffle(texts)
    return texts[:n], source


def merged_model_dir(base: Path, out: Path) -> Path:
    model, tokenizer = load_classifier(base, LABELS, new_head=True)
    merge(random_lora(model)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_manifest(out)
    return out


def logits(runtime: ModelRuntime, texts: list[str]) -> torch.Tensor:
    batch = runtime.tokenizer(texts, padding=True, truncation=True,
                              max_length=runtime.settings.max_length, return_tensors="pt")
    with torch.inference_mode():
        return runtime.model(**batch.to(runtime.device)).logits.float().cpu()


def throughput(runtime: ModelRuntime, texts: list[str], batch_size: int) -> dict[str, Any]:
    batch = [texts[i % len(texts)] for i in range(batch_size)]
    runtime.forward(batch)  # warm-up (kernels, allocator)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    runs, start = 0, time.perf_counter()
    while runs < 3 or (time.perf_counter() - start < 0.5 and runs < 200):
        runtime.forward(batch)
        runs += 1
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"batch": batch_size, "seq_per_s": round(runs * batch_size / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed / runs, 2),
            "peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def onnx_row(model_dir: Path, texts: list[str], cpu: "ModelRuntime") -> dict[str, Any]:
    """The ONNX engine on cuda:0: probabilities against the CPU float32 PyTorch ones, and speed
    at every batch size; or why there is no such row here."""
    try:
        import onnxruntime
    except ImportError:
        return {"skipped": "onnxruntime is not installed (pip install 'driftserve[onnx]')"}
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {"skipped": f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider "
                           f"(the CPU wheel; install onnxruntime-gpu=={onnxruntime.__version__})"}
    from trainer.packaging.onnx_export import add_onnx

    add_onnx(model_dir, cpu.settings.max_length)  # writes model.onnx, checked on the CPU
    rt = ModelRuntime.load(model_dir, "cuda:0", RuntimeSettings(engine="onnxruntime",
                                                                monitor=False))
    reference = cpu.probabilities(texts[:64])
    rel = float((rt.probabilities(texts[:64]) - reference).norm() / reference.norm())
    batches = [throughput(rt, texts, b) for b in BATCHES]
    for x in batches:
        x["peak_mib"] = None  # ONNX Runtime's own CUDA arena: torch's counters do not see it
    return {"rel_error": rel, "batches": batches}


def herding_rows(n: int = 100_000, d: int = 384) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(n, d, generator=gen, dtype=torch.float64) + 0.5
    rows = []
    for m in (100, 1000):
        gpu = features.to("cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        picks = herding_order(gpu, m).cpu()
        gpu_s = time.perf_counter() - start
        row = {"n": n, "d": d, "m": m, "gpu_s": round(gpu_s, 3)}
        if m == 100:  # same picks as on the CPU (float64 both ways)
            start = time.perf_counter()
            row["identical_to_cpu"] = bool(torch.equal(picks, herding_order(features, m)))
            row["cpu_s"] = round(time.perf_counter() - start, 3)
        rows.append(row)
    return rows


def table(result: dict[str, Any]) -> str:
    lines = [f"{result['card']}, torch {result['torch']}, {result['model']}, {result['texts']}", "",
             "| dtype | rel. error vs CPU fp32 | " + " | ".join(f"b={b}" for b in BATCHES)
             + " | peak MiB at 512 |", "|---|---:" + "|---:" * len(BATCHES) + "|---:|"]
    for dtype, r in result["runtime"].items():
        if "skipped" in r:
            lines.append(f"| {dtype} | {r['skipped']} |" + " |" * len(BATCHES) + " |")
            continue
        lines.append(f"| {dtype} | {r['rel_error']:.1e} | "
                     + " | ".join(f"{x['seq_per_s']:,.0f}" for x in r["batches"])
                     + (f" | {peak:,.0f} |" if (peak := r['batches'][-1]['peak_mib']) is not None
                        else " | — |"))
    lines += ["", "sequences per second; herding on the GPU (float64):", ""]
    lines += [f"- n={h['n']:,}, d={h['d']}, m={h['m']}: {h['gpu_s']} s"
              + (f" (CPU {h['cpu_s']} s, identical picks: {h['identical_to_cpu']})"
                 if "cpu_s" in h else "") for h in result["herding"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="base model directory (default: MiniLM wheel)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here (torch.cuda.is_available() is False); "
              "nothing measured. Run it on a machine with an NVIDIA GPU.", file=sys.stderr)
        return 2
    if args.model is None:
        from trainer.model.lora import default_base_model

        args.model = default_base_model()
    started = time.time()
    texts, source = texts_for_bench()
    card = torch.cuda.get_device_name(0)
    result: dict[str, Any] = {"card": card, "torch": torch.__version__, "texts": source,
                              "model": f"{Path(args.model).name} + merged LoRA r=16",
                              "host": platform.node(), "runtime": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        model_dir = merged_model_dir(args.model, Path(tmp) / "model")
        cpu = ModelRuntime.load(model_dir, "cpu", RuntimeSettings(monitor=False))
        reference = logits(cpu, texts[:64])
        for dtype in DTYPES:
            rt = ModelRuntime.load(model_dir, "cuda:0", RuntimeSettings(dtype=dtype, monitor=False))
            diff = logits(rt, texts[:64]) - reference
            rel = float(diff.norm() / reference.norm())
            result["runtime"][dtype] = {"rel_error": rel, "batches": [
                throughput(rt, texts, b) for b in BATCHES]}
            ok = rel <= (1e-4 if dtype == "float32" else HALF_TOLERANCE)
            print(f"{dtype}: relative logit error {rel:.1e} ({'ok' if ok else 'TOO LARGE'})",
                  file=sys.stderr)
            del rt
            torch.cuda.empty_cache()
        result["runtime"]["onnxruntime float32 (CUDA EP)"] = onnx_row(model_dir, texts, cpu)
    result["herding"] = herding_rows()
    result["seconds"] = round(time.time() - started, 1)
    slug = re.sub(r"[^a-z0-9]+", "-", card.lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"gpu-{slug}.json", result, sort_keys=False)
    atomic_write_text(args.out / f"gpu-{slug}.md", table(result))
    print(table(result))
    bad = [d for d, r in result["runtime"].items() if "skipped" not in r
           and r["rel_error"] > (1e-4 if "float32" in d else HALF_TOLERANCE)]
    return 1 if bad or not all(h.get("identical_to_cpu", True) for h in result["herding"]) else 0


if __name__ == "__main__":
    sys.exit(main())
