"""Serving precision on this CPU: float32 vs bf16 autocast through the handler's own runtime.

    .venv/bin/python bench/precision_cpu.py [--run RUN_DIR] [--per-domain 0]

For every built-in domain's whole test split: accuracy and macro-F1 of each precision (and of
three int8 tries, which ship only if they hold within 0.5 points everywhere), how often each
agrees with float32 on the label, and how far it moves the drift features (largest KS
distance between the two precisions' feature columns on the same sentences: the drift
reference was computed in float32, so this must stay far below the 0.1 alarm floor). Then
sequences/s of the forward at batch 1 and 8 (in-process, median of 3 timed passes). Results:
bench/results/precision-cpu.{json,md}.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import ks_2samp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.models import nyt_v1  # noqa: E402
from handlers.features import feature_matrix  # noqa: E402
from handlers.runtime import ModelRuntime, RuntimeSettings, cpu_has_bf16  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.sources import DOMAINS, load_source  # noqa: E402
from trainer.learning.train import TrainSettings  # noqa: E402
from trainer.model.evaluate import scores  # noqa: E402

T = TrainSettings()  # the splits every run is scored on


def run_all(rt: ModelRuntime, texts: list[str], base: ModelRuntime,
            batch: int = 32) -> dict[str, np.ndarray]:
    """Probabilities and the drift features (projected with `base`'s float32 reference)."""
    probs, feats = [], []
    for i in range(0, len(texts), batch):
        p, pooled, tokens = rt.forward(texts[i:i + batch], pooled=True)
        p, pooled = p.float(), pooled.float()
        probs.append(p.numpy())
        feats.append(feature_matrix(pooled.numpy(), p.numpy(), tokens.numpy(),
                                    base.monitor.reference.projection))
    return {"probs": np.concatenate(probs), "features": np.concatenate(feats)}


def speed(rt: ModelRuntime, texts: list[str], batch: int, n: int = 96) -> float:
    """Sequences/s of the forward alone, median of 3 passes over the same `n` texts."""
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for i in range(0, n, batch):
            rt.forward(texts[i:i + batch])
        rates.append(n / (time.perf_counter() - start))
    return float(np.median(rates))


def int8_variants(run: Path) -> dict[str, ModelRuntime] | str:
    """int8 tries on the encoder's Linear layers (the 3-way head stays float32): torch.ao's
    dynamic quantisation with per-channel weight scales, and torchao's weight-only and dynamic
    int8 (`make bench-precision` installs torchao; the serving stack does not need it)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    def encoder_only(rt: ModelRuntime) -> set[str]:
        return {n for n, m in rt.model.named_modules()
                if isinstance(m, torch.nn.Linear) and "classifier" not in n}

    out: dict[str, ModelRuntime] = {}
    rt = ModelRuntime.load(run)
    rt.model = quantize_dynamic(rt.model, {n: per_channel_dynamic_qconfig
                                           for n in encoder_only(rt)}, dtype=torch.qint8)
    out["int8 dynamic per-channel (torch.ao)"] = rt
    try:
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        return out
    for name, config in (("int8 weight-only (torchao)", Int8WeightOnlyConfig()),
                         ("int8 dynamic (torchao)", Int8DynamicActivationInt8WeightConfig())):
        rt = ModelRuntime.load(run)
        keep = encoder_only(rt)
        quantize_(rt.model, config, filter_fn=lambda _m, fqn, keep=keep: fqn in keep)
        out[name] = rt
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="run dir (default: bench.models.nyt_v1)")
    p.add_argument("--per-domain", type=int, default=0, help="test sentences per domain (0: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-int8", action="store_true", help="float32 and bf16 only")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision-cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_has_bf16():
        print("this CPU has no native bf16: nothing to compare", file=sys.stderr)
        return 1
    run = args.run or nyt_v1()
    runtimes = {}
    for name, dtype in (("float32", "float32"), ("bf16 autocast", "bfloat16")):
        runtimes[name] = ModelRuntime.load(run, settings=RuntimeSettings(dtype=dtype))
    assert runtimes["bf16 autocast"].cpu_autocast and not runtimes["float32"].cpu_autocast
    if not args.no_int8:
        runtimes.update(int8_variants(run))
    base = runtimes["float32"]
    labels = base.labels
    index = {label: i for i, label in enumerate(labels)}
    names = base.monitor.reference.names
    domains: dict[str, Any] = {}
    for domain in DOMAINS:
        test = load_source(domain, T.seed, T.label_threshold, tuple(labels))[domain].test
        test = test[:args.per_domain] if args.per_domain else test
        texts, truth = [ex.text for ex in test], [index[ex.label] for ex in test]
        out = {name: run_all(rt, texts, base) for name, rt in runtimes.items()}
        preds = {name: o["probs"].argmax(1).tolist() for name, o in out.items()}
        row: dict[str, Any] = {"n": len(test)}
        for name, o in out.items():
            row[name] = {k: v for k, v in scores(truth, preds[name], labels).items()
                         if k in ("accuracy", "macro_f1")}
            if name == "float32":
                continue
            ks = {n: float(ks_2samp(out["float32"]["features"][:, j], o["features"][:, j]
                                    ).statistic) for j, n in enumerate(names)}
            row[name].update({
                "label_agreement": float(np.mean(np.equal(preds["float32"], preds[name]))),
                "max_prob_diff": float(np.abs(out["float32"]["probs"] - o["probs"]).max()),
                "max_feature_ks": max(ks.values())})
        domains[domain] = row
        print(domain, row, file=sys.stderr)
    texts = [ex.text for ex in load_source("nyt", T.seed, T.label_threshold,
                                           tuple(labels))["nyt"].test][:96]
    rates = {name: {f"batch {b}": speed(rt, texts, b) for b in (1, 8)}
             for name, rt in runtimes.items()}
    holds = {name: all(abs(r[name][k] - r["float32"][k]) <= 0.005 for r in domains.values()
                       for k in ("accuracy", "macro_f1"))
             for name in runtimes if name != "float32"}
    result = {"run": str(run), "threads": args.threads, "domains": domains, "speed": rates,
              "within_half_a_point_everywhere": holds,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
                         f"{torch.backends.cpu.get_cpu_capability()}, native bf16"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result, sort_keys=False)
    rows = ["| domain | n | precision | acc / F1 | Δ acc / F1 vs float32 (points) | same label | "
            "max KS of a drift feature |", "|---|---:|---|---:|---:|---:|---:|"]
    for d, r in domains.items():
        a = r["float32"]
        for name in runtimes:
            b = r[name]
            delta = (f"{100 * (b['accuracy'] - a['accuracy']):+.1f} / "
                     f"{100 * (b['macro_f1'] - a['macro_f1']):+.1f}") if name != "float32" else ""
            same = f"{100 * b['label_agreement']:.1f} %" if name != "float32" else ""
            ks = f"{b['max_feature_ks']:.3f}" if name != "float32" else ""
            rows.append(f"| {d} | {r['n']} | {name} | {100 * b['accuracy']:.1f} / "
                        f"{100 * b['macro_f1']:.1f} | {delta} | {same} | {ks} |")
    rows += ["", "| forward (in-process, sequences/s) | batch 1 | batch 8 | within 0.5 points on "
             "every domain |", "|---|---:|---:|---|"]
    rows += [f"| {name} | {r['batch 1']:.0f} | {r['batch 8']:.0f} | "
             f"{'—' if name == 'float32' else ('yes' if holds[name] else 'NO')} |"
             for name, r in rates.items()]
    text = (f"Serving precision on this CPU ({result['machine']}, {args.threads} threads), run "
            f"`{run.name}`; whole test splits.\n\n" + "\n".join(rows) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
