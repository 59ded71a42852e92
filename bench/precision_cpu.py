"""Serving precision and engine on this CPU, through the handler's own runtime.

    .venv/bin/python bench/precision_cpu.py [--run RUN_DIR] [--per-domain 0]

Forms of one run: PyTorch float32 (the reference), bf16 autocast (where the CPU has native
bf16), torch.compile (inductor), the ONNX Runtime engine as `trainer archive --engine
onnxruntime` ships it, and int8 tries (torch.ao, torchao where installed, and ONNX Runtime:
dynamic on every encoder MatMul, dynamic on the encoder layers a per-layer sensitivity pass
on the run's validation split allows, and static QDQ calibrated on the run's drift reference
texts). An int8 form ships only if it holds within 0.5 points everywhere.

For every built-in domain's whole test split: accuracy and macro-F1 of each form, how often it
agrees with float32 on the label, and how far it moves the drift features (largest KS
distance between the two forms' feature columns on the same sentences: the drift reference was
computed in float32, so this must stay far below the 0.1 alarm floor). Then sequences/s of the
forward at batch 1 and 8 (in-process; rounds alternate over the forms, median kept). Results:
bench/results/precision-cpu.{json,md}.
"""

import argparse
import os
import platform
import shutil
import sys
import tempfile
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
from handlers.onnx_engine import ONNX_FILE, OnnxEngine  # noqa: E402
from handlers.runtime import ModelRuntime, RuntimeSettings, cpu_has_bf16  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.reference_texts import read_reference_texts  # noqa: E402
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


def speeds(runtimes: dict[str, ModelRuntime], texts: list[str], batches: tuple[int, ...] = (1, 8),
           rounds: int = 3) -> dict[str, dict[str, float]]:
    """Sequences/s of the forward alone over the same texts: each round times every form in
    turn (order reversed every other round, so a change in this shared machine's load favours
    none); the median round is kept."""
    rates: dict[str, dict[str, list[float]]] = {n: {f"batch {b}": [] for b in batches}
                                                for n in runtimes}
    names = list(runtimes)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            for b in batches:
                runtimes[name].forward(texts[:b])  # warm: first call of a shape
                start = time.perf_counter()
                for i in range(0, len(texts), b):
                    runtimes[name].forward(texts[i:i + b])
                rates[name][f"batch {b}"].append(len(texts) / (time.perf_counter() - start))
    return {n: {k: float(np.median(v)) for k, v in by.items()} for n, by in rates.items()}


def compiled(run: Path) -> ModelRuntime:
    """torch.compile (inductor, dynamic shapes) of the float32 model; compiled on first use."""
    rt = ModelRuntime.load(run)
    rt.model = torch.compile(rt.model, dynamic=True)
    return rt


def onnx_runtime(model_dir: Path, like: ModelRuntime) -> ModelRuntime:
    """A runtime answering with model_dir/model.onnx, `like`'s tokenizer and settings."""
    return ModelRuntime(None, like.tokenizer, like.settings, like.device,
                        engine=OnnxEngine.load(model_dir))


def answers(rt: ModelRuntime, texts: list[str], batch: int = 32) -> torch.Tensor:
    return torch.cat([rt.probabilities(texts[i:i + batch]).argmax(1)
                      for i in range(0, len(texts), batch)])


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over texts, one text per batch (real lengths)."""

    def __init__(self, rt: ModelRuntime, texts: list[str]) -> None:
        self.feeds = iter([{k: v.numpy() for k, v in rt.tokenizer(
            [t], truncation=True, max_length=rt.settings.max_length, return_tensors="pt").items()}
            for t in texts])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


AGREE = 0.995  # #30: answers of a shipped form agree with float32 on >= 99.5 % of the texts


def onnx_variants(run: Path, base: ModelRuntime, work: Path, calibration: list[str],
                  reference_texts: list[str]) -> tuple[dict[str, ModelRuntime], dict[str, Any]]:
    """ONNX Runtime forms: float32 as archived, and three int8 tries on the encoder's MatMuls
    (pooler and 3-way head stay float32, as in the torch tries). The per-layer pass quantises
    one encoder layer at a time, measures its agreement with float32 on `calibration` (the
    run's validation split, never a test text), then adds layers from the least harmful while
    the whole keeps >= 99.5 % agreement there."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    from trainer.packaging.onnx_export import add_onnx

    fp32 = work / "onnx-fp32"
    shutil.copytree(run, fp32)
    add_onnx(fp32, base.settings.max_length)
    graph = onnx.load(str(fp32 / ONNX_FILE)).graph
    encoder = [n.name for n in graph.node if n.op_type == "MatMul" and "/encoder/layer." in n.name]
    head = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.name not in encoder]
    def layer_of(node: str) -> int:
        return int(node.split("/encoder/layer.")[1].split("/")[0])

    layers = sorted({layer_of(n) for n in encoder})
    reference = answers(base, calibration)  # float32's answers, computed once

    def agreement(rt: ModelRuntime) -> float:
        return float((answers(rt, calibration) == reference).float().mean())

    def dynamic(name: str, layers_kept: set[int]) -> ModelRuntime:
        out = work / name
        out.mkdir()
        keep = head + [n for n in encoder if layer_of(n) in layers_kept]
        quantize_dynamic(fp32 / ONNX_FILE, out / ONNX_FILE, per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                         nodes_to_exclude=keep)
        return onnx_runtime(out, base)

    ort = onnx_runtime(fp32, base)
    forms = {"onnxruntime float32": ort,
             "int8 dynamic per-channel (onnxruntime)": dynamic("dyn-all", set())}
    alone = {i: agreement(dynamic(f"dyn-layer{i}", set(layers) - {i})) for i in layers}
    chosen: list[int] = []
    for i in sorted(layers, key=lambda i: -alone[i]):
        rt = dynamic(f"dyn-upto{len(chosen)}", set(layers) - {*chosen, i})
        if agreement(rt) < AGREE:
            break
        chosen.append(i)
    if chosen:
        forms[f"int8 dynamic, layers {','.join(map(str, sorted(chosen)))} (onnxruntime)"] = \
            dynamic("dyn-chosen", set(layers) - set(chosen))
    static = work / "static"
    static.mkdir()
    quantize_static(fp32 / ONNX_FILE, static / ONNX_FILE, _Calibration(base, reference_texts),
                    quant_format=QuantFormat.QDQ, per_channel=True, op_types_to_quantize=["MatMul"],
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=head, calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"ActivationSymmetric": True})
    forms["int8 static QDQ, reference texts (onnxruntime)"] = onnx_runtime(static, base)
    return forms, {"layer_agreement_alone": alone, "layers_quantised": sorted(chosen),
                   "calibration_texts": len(calibration),
                   "static_calibration_texts": len(reference_texts)}


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
    p.add_argument("--no-int8", action="store_true", help="no int8 tries")
    p.add_argument("--no-compile", action="store_true", help="no torch.compile form")
    p.add_argument("--no-onnx", action="store_true", help="no ONNX Runtime forms")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "precision-cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    run = args.run or nyt_v1()
    settings = RuntimeSettings(threads=args.threads)
    runtimes = {"float32": ModelRuntime.load(run, settings=settings)}
    base = runtimes["float32"]
    if cpu_has_bf16():
        runtimes["bf16 autocast"] = ModelRuntime.load(
            run, settings=RuntimeSettings(dtype="bfloat16", threads=args.threads))
        assert runtimes["bf16 autocast"].cpu_autocast
    else:
        print("this CPU has no native bf16: no bf16 form (the runtime serves float32)",
              file=sys.stderr)
    if not args.no_compile:
        runtimes["torch.compile inductor float32"] = compiled(run)
    if not args.no_int8:
        runtimes.update(int8_variants(run))
    extra: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    if not args.no_onnx:
        nyt = load_source("nyt", T.seed, T.label_threshold, tuple(base.labels))["nyt"]
        reference = [t for texts in read_reference_texts(run).values() for t in texts]
        forms, extra["onnx_int8"] = onnx_variants(
            run, base, work, [ex.text for ex in nyt.val][:400], reference)
        runtimes.update(forms if not args.no_int8 else
                        {k: v for k, v in forms.items() if "int8" not in k})
        print("onnx int8 selection:", extra["onnx_int8"], file=sys.stderr)
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
    rates = speeds(runtimes, texts)
    shutil.rmtree(work)
    holds = {name: all(abs(r[name][k] - r["float32"][k]) <= 0.005 for r in domains.values()
                       for k in ("accuracy", "macro_f1"))
             for name in runtimes if name != "float32"}
    result = {"run": str(run), "threads": args.threads, "domains": domains, "speed": rates,
              "within_half_a_point_everywhere": holds, **extra,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), "
                         f"{torch.backends.cpu.get_cpu_capability()}, "
                         + ("native bf16" if cpu_has_bf16() else "no native bf16")}
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
    rows += ["", "| forward (in-process, sequences/s) | batch 1 | batch 8 | same label as float32 "
             "(worst domain) | within 0.5 points on every domain |", "|---|---:|---:|---:|---|"]
    rows += [f"| {name} | {r['batch 1']:.0f} | {r['batch 8']:.0f} | " + (
             "— | — |" if name == "float32" else
             f"{100 * min(d[name]['label_agreement'] for d in domains.values()):.1f} % | "
             f"{'yes' if holds[name] else 'NO'} |") for name, r in rates.items()]
    if "onnx_int8" in extra:
        x = extra["onnx_int8"]
        rows += ["", "ONNX Runtime int8, per encoder layer quantised alone: agreement with float32 "
                 f"on {x['calibration_texts']} validation texts: " + ", ".join(
                     f"layer {i} {100 * a:.1f} %" for i, a in x["layer_agreement_alone"].items())
                 + f"; layers the pass kept in int8 (whole >= {100 * AGREE:.1f} %): "
                 f"{x['layers_quantised'] or 'none'}. Static QDQ calibrated on "
                 f"{x['static_calibration_texts']} drift reference texts."]
    text = (f"Serving precision on this CPU ({result['machine']}, {args.threads} threads), run "
            f"`{run.name}`; whole test splits.\n\n" + "\n".join(rows) + "\n")
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
