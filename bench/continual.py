"""Continual stream nyt -> movie -> amazon -> tweets: seven recipes side by side, several seeds.

    .venv/bin/python bench/continual.py              # MiniLM; see --help for the scale knobs
    .venv/bin/python bench/continual.py --quick      # tiny random BERT, a minute or two (smoke test)

Rows (same base model, data caps, epochs and replay budget; only the recipe differs):
  1 source only (train on the first domain, never adapt)   2 sequential full fine-tuning, no replay
  3 sequential LoRA, no replay      4 LoRA + random replay      5 LoRA + herding replay
  6 LoRA + herding replay + class balancing (the product's `trainer adapt` defaults)
  7 full retraining: at every step the `train` recipe from the base model on all data seen so far
plus few-shot (K per class of each new domain) for rows 3 and 6. Rows 2-6 run the real
`trainer train` / `trainer adapt` code and run dirs; row 7 uses the same LoRA fit on the joint data.
Writes continual.json, continual.md and continual.png (mean accuracy matrices) into --out.
"""

import argparse
import dataclasses
import hashlib
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.models import tiny_base  # noqa: E402
from bench.plot import matrices_png  # noqa: E402
from trainer.adapt import AdaptSettings, run_adapt, train_step  # noqa: E402
from trainer.artifacts import atomic_write_json  # noqa: E402
from trainer.continual_metrics import summary  # noqa: E402
from trainer.data import load_source  # noqa: E402
from trainer.evaluate import evaluate_domains  # noqa: E402
from trainer.evaluate_cli import cap, source_record, test_splits  # noqa: E402
from trainer.lora import load_classifier  # noqa: E402
from trainer.train import TrainSettings, run_train  # noqa: E402

ROWS = {
    "1 source only": None,
    "2 seq. full FT, no replay": {"selection": "none", "balance": False, "full_finetune": True},
    "3 seq. LoRA, no replay": {"selection": "none", "balance": False},
    "4 LoRA + random replay": {"selection": "random", "balance": False},
    "5 LoRA + herding replay": {"selection": "herding", "balance": False},
    "6 LoRA + herding + balancing (default)": {},
    "7 full retraining (joint)": None,
}
FEW_SHOT_ROWS = ("3 seq. LoRA, no replay", "6 LoRA + herding + balancing (default)")
METRICS = ("average_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer",
           "worst_drop", "macro_f1", "f1_spread", "trainable_share", "compute_vs_joint",
           "wall_vs_joint")


@dataclasses.dataclass
class Scale:
    seeds: list[int]
    per_domain: int  # training sentences per domain
    max_eval: int  # val and test sentences per domain
    epochs: int
    memory: int
    lora_r: int
    lr: float
    batch_size: int
    full_lr: float
    max_length: int
    shots: list[int]
    few_shot_epochs: int
    threads: int
    stream: list[str] = dataclasses.field(default_factory=lambda: ["nyt", "movie", "amazon", "tweets"])
    base_model: str = ""


FULL = Scale(seeds=[0, 1, 2], per_domain=300, max_eval=250, epochs=2, memory=150, lora_r=16,
             lr=2e-3, batch_size=16, full_lr=5e-5, max_length=64, shots=[5, 10], few_shot_epochs=2,
             threads=1)
QUICK = Scale(seeds=[0, 1, 2], per_domain=48, max_eval=32, epochs=1, memory=24, lora_r=4, lr=1e-3,
              batch_size=16, full_lr=1e-4, max_length=32, shots=[5], few_shot_epochs=1, threads=1)


# Fixed passes, no warm-up, early stopping or class weights in v1: the recipe the published
# table was measured with (the defaults' own benchmark is bench/defaults.py).
FIXED_PASSES = {"min_steps": 0, "patience": 0, "lr_warmup": 0.0}


def train_settings(sc: Scale, seed: int, selection: str) -> TrainSettings:
    return TrainSettings(**FIXED_PASSES, balance=False, base_model=sc.base_model, epochs=sc.epochs,
                         lr=sc.lr,
                         batch_size=sc.batch_size, max_length=sc.max_length,
                         max_train=sc.per_domain, max_eval=sc.max_eval, seed=seed,
                         lora_r=sc.lora_r, lora_alpha=2 * sc.lora_r, memory=sc.memory,
                         selection=selection)


def adapt_settings(sc: Scale, seed: int, shots: int = 0, **row: Any) -> AdaptSettings:
    lr = sc.full_lr if row.get("full_finetune") else sc.lr
    return AdaptSettings(**FIXED_PASSES, epochs=sc.few_shot_epochs if shots else sc.epochs, lr=lr,
                         batch_size=sc.batch_size,
                         max_length=sc.max_length, max_train=sc.per_domain, max_eval=sc.max_eval,
                         seed=seed, lora_r=sc.lora_r, lora_alpha=2 * sc.lora_r,
                         memory=sc.memory, shots=shots, **row)


def chain(v1: Path, sc: Scale, s: AdaptSettings, work: Path, name: str) -> dict[str, Any]:
    """Run `adapt` over the rest of the stream; the last report holds the whole matrix."""
    prev, v1_report = v1, json.loads((v1 / "report.json").read_text())
    wall = v1_report["wall_time_s"]
    for i, domain in enumerate(sc.stream[1:], start=2):
        out = work / f"{name}-v{i}"
        report = run_adapt(s, prev, domain, out)
        wall += report["wall_time_s"]
        if prev != v1:
            shutil.rmtree(prev)
        prev = out
    shutil.rmtree(prev)
    return {"matrix": report["accuracy_matrix"], "pooled": report["metrics"]["test"],
            "share": report["parameters"]["share"],
            "examples": report["examples_processed_total"], "wall": wall}


def tests_for(sc: Scale, seed: int, v1_report: dict, labels: list[str]) -> dict[str, list]:
    """The exact test splits `adapt` scores (rebuilt from the same source records)."""
    records = {sc.stream[0]: v1_report["domain_sources"][sc.stream[0]]}
    for d in sc.stream[1:]:
        split = load_source(d, seed)[d]
        records[d] = source_record(d, seed, 0.5, sc.max_eval, cap(split.test, sc.max_eval))
    return test_splits(records, labels)


def source_only(v1: Path, tests: dict, sc: Scale, v1_report: dict) -> dict[str, Any]:
    from trainer.rundir import load_run

    model, tokenizer, labels, _ = load_run(v1)
    scored = evaluate_domains(model, tokenizer, tests, labels, sc.max_length)
    row = [scored["by_domain"][d]["accuracy"] for d in sc.stream]
    return {"matrix": [row] * len(sc.stream), "pooled": scored["pooled"],
            "share": v1_report["parameters"]["share"],
            "examples": v1_report["examples_processed"], "wall": v1_report["wall_time_s"]}


def joint(sc: Scale, seed: int, tests: dict, v1_report: dict, base: Path) -> dict[str, Any]:
    """Row 7: at step i, the train recipe (LoRA from the base model) on domains 0..i together."""
    labels = v1_report["labels"]
    splits = {d: load_source(d, seed)[d] for d in sc.stream}
    matrix = [v1_report["accuracy_matrix"][0] + [None] * (len(sc.stream) - 1)]
    examples, wall = v1_report["examples_processed"], v1_report["wall_time_s"]
    s = adapt_settings(sc, seed, selection="none", balance=False)
    for i in range(1, len(sc.stream)):
        start = time.time()
        seen = sc.stream[: i + 1]
        train = [ex for d in seen for ex in cap(splits[d].train, sc.per_domain)]
        val = [ex for d in seen for ex in cap(splits[d].val, sc.max_eval)]
        model, tokenizer = load_classifier(base, labels, new_head=True)
        merged, result, counts, _ = train_step(model, tokenizer, train, val, labels, s)
        scored = evaluate_domains(merged, tokenizer, {d: tests[d] for d in seen}, labels,
                                  sc.max_length)
        matrix.append([scored["by_domain"][d]["accuracy"] for d in seen]
                      + [None] * (len(sc.stream) - i - 1))
        examples += result.examples_seen
        wall += time.time() - start
    return {"matrix": matrix, "pooled": scored["pooled"], "share": counts["share"],
            "examples": examples, "wall": wall}


def metrics(run: dict[str, Any], joint_run: dict[str, Any]) -> dict[str, float]:
    filled = [[0.0 if v is None else v for v in row] for row in run["matrix"]]  # j > i unused
    f1 = run["pooled"]["per_class_f1"].values()
    return {**summary(filled), "macro_f1": run["pooled"]["macro_f1"],
            "f1_spread": max(f1) - min(f1), "trainable_share": run["share"],
            "compute_vs_joint": run["examples"] / joint_run["examples"],
            "wall_vs_joint": run["wall"] / joint_run["wall"]}


def random_v1(v1: Path, out: Path, sc: Scale, seed: int) -> Path:
    """v1 with a randomly selected buffer: `train` is seeded, so retraining would only
    reproduce the same weights; re-select the buffer and re-save instead."""
    from handlers.features import REFERENCE_FILE
    from trainer.features import BUFFER_FILE, buffer_bytes, grow_buffer, sizes_json
    from trainer.herding import ReplayBuffer
    from trainer.rundir import load_run, save_run

    model, tokenizer, labels, report = load_run(v1)
    train = cap(load_source(sc.stream[0], seed)[sc.stream[0]].train, sc.per_domain)
    buffer = grow_buffer(model, tokenizer, ReplayBuffer(), train, sc.memory, "random", seed,
                         sc.max_length)
    report = {**report, "settings": {**report["settings"], "selection": "random"},
              "replay_buffer": sizes_json(buffer)}
    save_run(out, model, tokenizer, labels, report, extra={
        BUFFER_FILE: buffer_bytes(buffer), REFERENCE_FILE: (v1 / REFERENCE_FILE).read_bytes()})
    return out


def one_seed(sc: Scale, seed: int, work: Path) -> dict[str, dict[str, Any]]:
    v1 = {"herding": work / "v1-herding", "random": work / "v1-random"}
    run_train(train_settings(sc, seed, "herding"), sc.stream[0], v1["herding"])
    random_v1(v1["herding"], v1["random"], sc, seed)
    v1_report = json.loads((v1["herding"] / "report.json").read_text())
    tests = tests_for(sc, seed, v1_report, v1_report["labels"])
    base = Path(v1_report["base_model"])
    runs = {"7 full retraining (joint)": joint(sc, seed, tests, v1_report, base),
            "1 source only": source_only(v1["herding"], tests, sc, v1_report)}
    for name, row in ROWS.items():
        if row is not None:
            start = v1["random" if row.get("selection") == "random" else "herding"]
            runs[name] = chain(start, sc, adapt_settings(sc, seed, **row), work, name[0])
    for name in FEW_SHOT_ROWS:
        for k in sc.shots:
            s = adapt_settings(sc, seed, shots=k, **ROWS[name])
            runs[f"{name} (K={k})"] = chain(v1["herding"], sc, s, work, f"{name[0]}k{k}")
    joint_run = runs["7 full retraining (joint)"]
    order = [*ROWS, *(n for n in runs if n not in ROWS)]
    return {name: {"metrics": metrics(runs[name], joint_run), "matrix": runs[name]["matrix"]}
            for name in order}


def aggregate(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in per_seed[0]:
        values = {m: [s[name]["metrics"][m] for s in per_seed] for m in METRICS}
        rows = per_seed[0][name]["matrix"]
        mean_matrix = [[None if rows[i][j] is None else
                        statistics.fmean(s[name]["matrix"][i][j] for s in per_seed)
                        for j in range(len(rows[i]))] for i in range(len(rows))]
        out[name] = {"mean": {m: statistics.fmean(v) for m, v in values.items()},
                     "std": {m: statistics.stdev(v) if len(v) > 1 else 0.0
                             for m, v in values.items()},
                     "mean_matrix": mean_matrix}
    return out


def table(agg: dict[str, dict[str, Any]], names: list[str]) -> str:
    pts = {"average_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer",
           "worst_drop", "macro_f1", "f1_spread"}
    head = ["row", "final avg acc", "avg incremental acc", "forgetting", "BWT", "worst drop",
            "macro-F1", "per-class F1 spread", "trainable share", "compute vs row 7",
            "wall time vs row 7"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for name in names:
        cells = []
        for m in METRICS:
            mean, std = agg[name]["mean"][m], agg[name]["std"][m]
            scale = 100 if m in pts else 1
            fmt = ".1f" if m in pts else (".2%" if m == "trainable_share" else ".2f")
            if m == "trainable_share":
                cells.append(f"{mean:{fmt}}")
            else:
                cells.append(f"{mean * scale:{fmt}} ± {std * scale:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(agg: dict[str, dict[str, Any]]) -> list[str]:
    six, seven = agg["6 LoRA + herding + balancing (default)"]["mean"], \
        agg["7 full retraining (joint)"]["mean"]
    checks = [("worst drop at any step <= 3 points", six["worst_drop"] <= 0.03,
               f"{100 * six['worst_drop']:.1f}"),
              ("forgetting <= 1 point", six["forgetting"] <= 0.01, f"{100 * six['forgetting']:.1f}"),
              ("final average >= row 7 - 0.5 points",
               six["average_accuracy"] >= seven["average_accuracy"] - 0.005,
               f"{100 * six['average_accuracy']:.1f} vs {100 * seven['average_accuracy']:.1f}"),
              ("compute <= 25 % of row 7", six["compute_vs_joint"] <= 0.25,
               f"{100 * six['compute_vs_joint']:.0f} %")]
    return [f"- {'met' if ok else 'MISSED'}: {what} (row 6: {value})" for what, ok, value in checks]


def markdown(agg: dict[str, dict[str, Any]], sc: Scale, seconds: float) -> str:
    main_rows = list(ROWS)
    few = [n for n in agg if "(K=" in n]
    return "\n".join([
        f"Stream {' -> '.join(sc.stream)}; mean ± std over seeds {sc.seeds}; accuracies and F1 "
        f"in points; {sc.per_domain} training sentences per domain, {sc.epochs} epochs, batch "
        f"{sc.batch_size}, lr {sc.lr} (full FT {sc.full_lr}), LoRA r={sc.lora_r}, replay budget "
        f"{sc.memory} in total, val and test capped at {sc.max_eval} per domain; "
        f"{seconds / 60:.0f} min on {sc.threads} torch thread(s). Compute = training examples "
        f"processed over the stream relative to row 7.", "",
        table(agg, main_rows), "", f"Few-shot (K labelled examples per class of each new domain, "
        f"{sc.few_shot_epochs} epochs):", "", table(agg, few), "", "Goals for row 6:",
        *goals(agg), ""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny random BERT, tiny data (smoke test)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"), help="output folder")
    for f in dataclasses.fields(Scale):
        kind = type(getattr(FULL, f.name))
        if kind is list:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.split(","))
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=kind)
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    sc = dataclasses.replace(base, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Scale)
                                      if getattr(args, f.name) is not None})
    sc.seeds, sc.shots = [int(x) for x in sc.seeds], [int(x) for x in sc.shots]
    torch.set_num_threads(sc.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Finished seeds survive a killed run and can be run in parallel (`--seeds 1`, `--seeds 2`),
    # then gathered by a run over all seeds; keyed by every setting but the seed list (gitignored).
    scale = {k: v for k, v in dataclasses.asdict(sc).items() if k != "seeds"}
    key = hashlib.sha256(json.dumps(scale, sort_keys=True).encode()).hexdigest()
    done = out / "tmp" / f"continual-{key[:12]}"
    per_seed, seconds = [], 0.0
    with tempfile.TemporaryDirectory(prefix="continual-") as tmp:  # never inside the repo
        if args.quick and not sc.base_model:
            sc.base_model = str(tiny_base(Path(tmp) / "tiny-bert"))
        for seed in sc.seeds:
            saved = done / f"seed{seed}.json"
            if not args.quick and saved.is_file():
                result = json.loads(saved.read_text())
                print(f"seed {seed}: reusing {saved}", file=sys.stderr)
            else:
                started = time.time()
                (Path(tmp) / str(seed)).mkdir()
                result = {"runs": one_seed(sc, seed, Path(tmp) / str(seed)),
                          "seconds": time.time() - started}
                if not args.quick:
                    atomic_write_json(saved, result)
                print(f"seed {seed} done in {result['seconds'] / 60:.1f} min", file=sys.stderr)
            per_seed.append(result["runs"])
            seconds += result["seconds"]
    agg = aggregate(per_seed)
    stem = "continual-quick" if args.quick else "continual"
    meta = {**dataclasses.asdict(sc), "quick": args.quick, "seconds": round(seconds),
            "torch": torch.__version__, "machine": platform.machine(),
            "defaults_row_6": dataclasses.asdict(adapt_settings(sc, sc.seeds[0]))}
    (out / f"{stem}.json").write_text(json.dumps(
        {"settings": meta, "aggregate": agg, "per_seed": per_seed}, indent=2) + "\n")
    md = markdown(agg, sc, seconds)
    (out / f"{stem}.md").write_text(md)
    matrices_png(out / f"{stem}.png", {n: a["mean_matrix"] for n, a in agg.items()
                                        if "(K=" not in n}, sc.stream)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
