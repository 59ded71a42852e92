"""Which distillation keeps old answers best? `adapt`'s distillation settings, chosen on validation.

    .venv/bin/python bench/distill_sweep.py --v1 runs/sentiment/v1   # the demo's v1 (nyt)
    .venv/bin/python bench/distill_sweep.py --quick                  # tiny random BERT (smoke)
    .venv/bin/python bench/distill_sweep.py --v1 runs/sentiment/v1 --shots 8 \
        --configs "small validation split trained on;contrastive 20"   # K per class, chosen ones

The setting is the loop's: vN serves the old domain, a labeller answers `--labels` texts of the
new domain, and `trainer adapt --test-data DOMAIN` learns them. Every candidate is scored on
VALIDATION splits only (the test splits stay for the continual bench and the gate): on the old
domain its disagreement with vN, negative flips (vN right, candidate wrong) and positive flips,
and its accuracy; on the new domain its gain over vN. The shipped default is the config with
the fewest old-domain disagreements among those that keep at least 90 % of the undistilled
recipe's mean new-domain gain. Writes distill-sweep.json and .md into --out.
"""

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models import tiny_base  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.reference_texts import distil_half  # noqa: E402
from trainer.data.sources import load_source  # noqa: E402
from trainer.learning.adapt import AdaptSettings, run_adapt  # noqa: E402
from trainer.learning.train import TrainSettings, run_train  # noqa: E402
from trainer.model.churn import churn  # noqa: E402
from trainer.model.evaluate import predict_ids  # noqa: E402
from trainer.model.rundir import load_run  # noqa: E402

NONE = "no distillation (former default)"
UNLABELLED = "unlabelled"  # not a setting: that many more train texts, as `adapt --unlabelled`
OLD_HALF = "old_half"  # not a setting: score the old domain on the held-out half no router saw
LEARNT = {"replay_mix": "learnt"}  # each old domain's replay scaled to the mix it was learnt with
CONFIGS = {NONE: {"distill": 0.0},
           "replay w1": {"distill": 1.0, "distill_rows": "replay"},
           "replay+held-out w1": {"distill": 1.0, "distill_rows": "replay",
                                  "distill_held_out": True},
           "replay+held-out w3": {"distill": 3.0, "distill_rows": "replay",
                                  "distill_held_out": True},
           "all+held-out w1": {"distill": 1.0, "distill_rows": "all", "distill_held_out": True},
           "agree+held-out w3": {"distill": 3.0, "distill_rows": "agree",
                                 "distill_held_out": True},
           "none, keep 0.5": {"distill": 0.0, "keep": 0.5},
           "replay w1, keep 0.5": {"distill": 1.0, "distill_rows": "replay", "keep": 0.5},
           "replay w1, keep 0.3": {"distill": 1.0, "distill_rows": "replay", "keep": 0.3},
           "none, lr 3e-4": {"distill": 0.0, "lr": 3e-4},
           "replay+held-out w3, lr 3e-4": {"distill": 3.0, "distill_rows": "replay",
                                           "distill_held_out": True, "lr": 3e-4},
           "replay+held-out w3, lr 1e-4": {"distill": 3.0, "distill_rows": "replay",
                                           "distill_held_out": True, "lr": 1e-4},
           "none, learnt mix": {"distill": 0.0, **LEARNT},
           "replay w1, learnt mix": {"distill": 1.0, "distill_rows": "replay", **LEARNT},
           "replay+held-out w3, learnt mix": {"distill": 3.0, "distill_rows": "replay",
                                              "distill_held_out": True, **LEARNT},
           "self-training, 300 unlabelled": {"distill": 0.0, UNLABELLED: 300},
           "contrastive 20": {"distill": 0.0, "contrastive_pairs": 20},
           "small validation split trained on": {"distill": 0.0, "min_val": 30},
           "small validation split trained on, 300 unlabelled": {
               "distill": 0.0, "min_val": 30, UNLABELLED: 300},
           "the same, scored on the half no router saw": {
               "distill": 0.0, "min_val": 30, UNLABELLED: 300, OLD_HALF: True},
           "the same, routed (`--route`)": {
               "distill": 0.0, "min_val": 30, UNLABELLED: 300, OLD_HALF: True, "route": True}}


def labelled_file(domain: str, n: int, seed: int, out: Path, unlabelled: int = 0,
                  per_class: int = 0) -> Path:
    """n labelled texts of the new domain's train split, as a labeller would hand them back
    (`per_class`: that many of each class instead, the few-shot setting); with `unlabelled`,
    that many of the others go, without labels, to OUT.unlabelled.jsonl (the captured traffic
    that was not sent for labelling)."""
    train = list(load_source(domain, seed)[domain].train)
    random.Random(seed).shuffle(train)
    if per_class:
        chosen = [ex for label in sorted({ex.label for ex in train})
                  for ex in [e for e in train if e.label == label][:per_class]]
    else:
        chosen = train[:n]
    rest = [ex for ex in train if ex not in chosen]
    out.write_text("".join(json.dumps({"text": ex.text, "label": ex.label, "domain": domain})
                           + "\n" for ex in chosen))
    out.with_suffix(".unlabelled.jsonl").write_text("".join(
        json.dumps({"text": ex.text, "label": ""}) + "\n" for ex in rest[:unlabelled]))
    return out


def answers(run: Path, texts: list[str]) -> list[str]:
    model, tokenizer, labels, report = load_run(run)
    return [labels[i] for i in predict_ids(model, tokenizer, texts,
                                           max_length=report["settings"]["max_length"])]


def one(v1: Path, old: str, new: str, knobs: dict, n: int, seed: int, work: Path,
        base_answers: dict, max_eval: int, extra: dict, cache: Path | None = None,
        per_class: int = 0) -> dict:
    """One candidate's validation scores; cached under `cache` (a killed sweep resumes)."""
    key = hashlib.sha256(json.dumps([str(v1.resolve()), old, new, knobs, n, seed, max_eval,
                                     extra] + ([per_class] if per_class else []),
                                    sort_keys=True).encode()).hexdigest()[:16]
    hit = cache / f"{key}.json" if cache else None
    if hit is not None and hit.is_file():
        return json.loads(hit.read_text())
    row = _one(v1, old, new, knobs, n, seed, work, base_answers, max_eval, extra, per_class)
    if hit is not None:
        atomic_write_json(hit, row)
    return row


def _one(v1: Path, old: str, new: str, knobs: dict, n: int, seed: int, work: Path,
         base_answers: dict, max_eval: int, extra: dict, per_class: int) -> dict:
    val_old = load_source(old, seed)[old].val[: max_eval or None]
    if knobs.get(OLD_HALF):  # a router learns from the other half (trainer.learning.experts.router_texts)
        val_old = [ex for ex in val_old if not distil_half(ex.text)]
    val_new = load_source(new, seed)[new].val[: max_eval or None]
    key = (old, new, seed, bool(knobs.get(OLD_HALF)))
    if key not in base_answers:
        base_answers[key] = (answers(v1, [ex.text for ex in val_old]),
                             answers(v1, [ex.text for ex in val_new]))
    before_old, before_new = base_answers[key]
    out = work / f"{new}-{seed}-{abs(hash(json.dumps(knobs, sort_keys=True)))}"
    settings = {"min_val": 0, "route": False,  # configs that do not name them ran before them
                **{k: v for k, v in {**extra, **knobs}.items()
                   if k not in (UNLABELLED, OLD_HALF)}}
    data = labelled_file(new, n, seed, work / f"{new}-{seed}.jsonl", knobs.get(UNLABELLED, 0),
                         per_class)
    report = run_adapt(AdaptSettings(seed=seed, **settings), v1, str(data), out, test_data=new,
                       unlabelled=str(data.with_suffix(".unlabelled.jsonl"))
                       if knobs.get(UNLABELLED) else None)
    after_old = answers(out, [ex.text for ex in val_old])
    after_new = answers(out, [ex.text for ex in val_new])
    truth_old, truth_new = [ex.label for ex in val_old], [ex.label for ex in val_new]
    acc = lambda p, t: sum(a == b for a, b in zip(p, t)) / len(t)  # noqa: E731
    return {"new_domain": new, "seed": seed, **churn(before_old, after_old, truth_old),
            "old_accuracy_change": acc(after_old, truth_old) - acc(before_old, truth_old),
            "new_gain": acc(after_new, truth_new) - acc(before_new, truth_new),
            "examples_processed": report["examples_processed"],
            "wall_time_s": report["wall_time_s"]}


def summarise(rows: list[dict]) -> dict:
    keys = ("disagreement", "negative_flip_rate", "positive_flip_rate", "old_accuracy_change",
            "new_gain", "examples_processed")
    wall = [r["wall_time_s"] for r in rows if "wall_time_s" in r]  # rows cached before it
    return {k: statistics.fmean(r[k] for r in rows) for k in keys} | {
        "worst_negative_flip_rate": max(r["negative_flip_rate"] for r in rows),
        "wall_time_s": statistics.fmean(wall) if len(wall) == len(rows) else None}


def choose(summary: dict[str, dict]) -> str:
    base_gain = summary[NONE]["new_gain"]
    keep = {c: s for c, s in summary.items() if s["new_gain"] >= 0.9 * base_gain}
    return min(keep or summary, key=lambda c: summary[c]["disagreement"])


def markdown(result: dict) -> str:
    lines = [f"Distillation sweep on validation splits: v1 trained on {result['old']}, then "
             f"`adapt --test-data` with {result['labels']} labelled texts of each new domain "
             f"({', '.join(result['new_domains'])}), seeds {result['seeds']}; means over "
             "domains and seeds, in points. Chosen: the fewest old-domain disagreements among "
             "configs keeping >= 90 % of the undistilled mean new-domain gain. Learnt mix: each "
             "old domain's replay scaled to the class mix it was learnt with (otherwise every "
             "exemplar weighs the same). Self-training: `--unlabelled` with that many more "
             "texts of the new domain's train split, without their labels. Small validation "
             "split trained on: `--min-val 30` (the other configs hold 15 % of the labelled "
             "rows out to pick epochs, as adapt did before). Routed: `--route`, each text "
             "answered by its domain's version; its router learns from half of the old "
             "domain's validation texts, so it and the row above it are scored on the other "
             "half. Seconds: one adapt step on 2 "
             "cores, often shared with another job.", "",
             "| config (distilled rows, weight; keep) | old: disagreement | old: negative flips (worst) "
             "| old: positive flips "
             "| old: accuracy change | new: gain | examples processed | adapt s (2 cores) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c, s in result["summary"].items():
        mark = " **(chosen)**" if c == result["chosen"] else ""
        lines.append(f"| {c}{mark} | {100 * s['disagreement']:.1f} | "
                     f"{100 * s['negative_flip_rate']:.1f} ({100 * s['worst_negative_flip_rate']:.1f}) | "
                     f"{100 * s['positive_flip_rate']:.1f} | {100 * s['old_accuracy_change']:+.1f} | "
                     f"{100 * s['new_gain']:+.1f} | {s['examples_processed']:.0f} | "
                     + ("" if s.get("wall_time_s") is None else f"{s['wall_time_s']:.0f}")
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--v1", type=Path, help="a v1 run dir trained on --old (default: train one)")
    p.add_argument("--old", default="nyt")
    p.add_argument("--new", default="movie,amazon,tweets")
    p.add_argument("--labels", type=int, default=96, help="labelled texts of each new domain")
    p.add_argument("--shots", type=int, default=0,
                   help="K labelled texts per class instead of --labels (the few-shot setting)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--configs", default="", help="config names separated by ; (default: all)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cache", type=Path, help="keep each candidate's scores here (resumable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    news = args.new.split(",")
    configs = {c: CONFIGS[c] for c in (args.configs.split(";") if args.configs else CONFIGS)}
    quick = {"max_eval": 24, "min_steps": 0, "epochs": 1, "max_epochs": 1} if args.quick else {}
    with tempfile.TemporaryDirectory(prefix="distill-") as tmp:
        work = Path(tmp)
        v1 = args.v1
        if v1 is None:
            base = str(tiny_base(work / "tiny")) if args.quick else ""
            v1 = work / "v1"
            run_train(TrainSettings(base_model=base, **({"max_train": 96, "max_eval": 24,
                                                         "min_steps": 0, "epochs": 1}
                                                        if args.quick else {})), args.old, v1)
        base_answers: dict = {}
        per_config = {}
        for name, knobs in configs.items():
            per_config[name] = [one(v1, args.old, new, knobs, args.labels, seed, work,
                                    base_answers, 24 if args.quick else 0, quick, args.cache,
                                    args.shots)
                                for new in news for seed in seeds]
            print(f"{name}: {summarise(per_config[name])}", file=sys.stderr, flush=True)
    summary = {c: summarise(rows) for c, rows in per_config.items()}
    result = {"old": args.old, "new_domains": news, "seeds": seeds,
              "labels": f"{args.shots} per class" if args.shots else args.labels,
              "configs": configs, "rows": per_config, "summary": summary,
              "chosen": choose(summary) if NONE in summary else None,
              "quick": args.quick}
    stem = ("distill-sweep" + (f"-k{args.shots}" if args.shots else "")
            + ("-quick" if args.quick else ""))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", result, sort_keys=False)
    atomic_write_text(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
