"""Does the rollout gate decide on evidence? Good and known-bad candidates, evidence resampled.

    .venv/bin/python bench/gate.py --v1 runs/sentiment/v1   # the demo's v1 (nyt)
    .venv/bin/python bench/gate.py --quick                  # tiny random BERT (smoke test)

v1 serves nyt. For each new domain three candidates are built:
  default   `trainer adapt` with its shipped defaults (routing included) on the loop's inputs:
            96 labelled texts and 204 more without labels
  seq-lora  sequential LoRA on 1000 texts without replay or distillation (forgets nyt)
  new-only  `trainer train` on 1000 texts of the new domain alone (never saw nyt)
Both versions answer, in process and as served (fp32), every text the gate would send: the
old domain's test split and the held-out texts v1's archive carries, and the new domain's test
split. The gate (`trainer.ops.gate_evidence.judge`, the shipped rules and defaults) then decides
on the whole evidence and on bootstrap draws of it (test sentences and held-out texts drawn
with replacement, the test capped at --holdout); the data set's labels stand in for the
labeller. For comparison, the paired-only gate of the previous release on the same draws.
A known-bad candidate must be promoted in <= 5 % of draws and never on the whole evidence;
the default recipe's in >= 80 %.
"""

import argparse
import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.distill_sweep import labelled_file  # noqa: E402
from tests.models import tiny_base  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.lineage import test_splits  # noqa: E402
from trainer.data.reference_texts import distil_half, read_reference_texts  # noqa: E402
from trainer.data.sources import load_source  # noqa: E402
from trainer.learning.adapt import AdaptSettings, run_adapt  # noqa: E402
from trainer.learning.train import TrainSettings, run_train  # noqa: E402
from trainer.model.evaluate import predict_ids  # noqa: E402
from trainer.model.rundir import load_run  # noqa: E402
from trainer.ops.gate import PASS, better, not_worse, paired, verdict  # noqa: E402
from trainer.ops.gate_evidence import Answers, judge  # noqa: E402
from trainer.ops.rollout import GateSettings  # noqa: E402

KINDS = ("default", "seq-lora", "new-only")
BAD = ("seq-lora", "new-only")


def answers_of(run: Path, texts: list[str]) -> list[str]:
    model, tokenizer, labels, report = load_run(run)
    return [labels[i] for i in predict_ids(model, tokenizer, texts,
                                           max_length=report["settings"]["max_length"])]


def build(kind: str, v1: Path, new: str, out: Path, work: Path, base: str, quick: bool) -> Path:
    small = {"max_eval": 40, "min_steps": 0, "epochs": 1, "max_epochs": 1} if quick else {}
    rows = 48 if quick else 1000
    if kind == "default":
        # the loop's inputs: 96 labelled texts and the 204 captured ones nobody labelled
        data = labelled_file(new, 24 if quick else 96, 0, work / f"{new}.jsonl",
                             unlabelled=24 if quick else 204)
        run_adapt(AdaptSettings(**small), v1, str(data), out, test_data=new,
                  unlabelled=str(data.with_suffix(".unlabelled.jsonl")))
    elif kind == "seq-lora":
        run_adapt(AdaptSettings(selection="none", balance=False, distill=0.0, route=False,
                                max_train=rows, **small), v1, new, out)
    else:
        run_train(TrainSettings(base_model=base, max_train=rows,
                                **({"max_eval": 40, "min_steps": 0, "epochs": 1} if quick
                                   else {})), new, out)
    return out


@dataclasses.dataclass
class Evidence:
    """Every text the gate would send for one candidate, both versions' answers and labels."""
    old_domain: str
    new_domain: str
    test: dict[str, list[tuple[str, str, str, str]]]  # domain -> (text, label, old, new)
    held_out: list[tuple[str, str, str, str]]  # old domain's held-out texts, labels for the labeller


def evidence(v1: Path, cand: Path, old: str, new: str, quick: bool) -> Evidence:
    v1_report = json.loads((v1 / "report.json").read_text())
    labels = v1_report["labels"]
    tests = test_splits({old: v1_report["domain_sources"][old]}, labels)
    split = load_source(new, 0)[new]
    tests[new] = split.test[:40] if quick else split.test
    held = read_reference_texts(v1)[old]
    report = json.loads((cand / "report.json").read_text())
    if report.get("routing") or (report.get("distillation") or {}).get("unlabelled_rows"):
        held = [t for t in held if not distil_half(t)]  # as the gate: the half it never saw
    truth = {ex.text: ex.label for ex in load_source(old, v1_report["settings"]["seed"])[old].val}
    out: dict[str, list] = {}
    for d, exs in tests.items():
        texts = [ex.text for ex in exs]
        out[d] = list(zip(texts, [ex.label for ex in exs], answers_of(v1, texts),
                          answers_of(cand, texts)))
    held_rows = list(zip(held, [truth.get(t) for t in held], answers_of(v1, held),
                         answers_of(cand, held)))
    return Evidence(old, new, out, held_rows)


def as_answers(rows: list, held: list) -> Answers:
    texts = [r[0] for r in rows] + [r[0] for r in held]
    n = len(texts)
    return Answers(texts, [r[1] for r in rows] + [None] * len(held),
                   [r[2] for r in rows + held], [r[3] for r in rows + held],
                   [1.0] * n, [1.0] * n, len(rows))


def decide(ev: Evidence, test: dict[str, list], held: list, g: GateSettings) -> dict[str, str]:
    """The shipped gate's accuracy rules and the previous release's paired-only rules."""
    truth = {r[0]: r[1] for r in held}
    labeller = lambda _, texts: {t: truth[t] for t in texts if truth.get(t)}  # noqa: E731
    answers = {ev.old_domain: as_answers(test[ev.old_domain], held),
               ev.new_domain: as_answers(test[ev.new_domain], [])}
    judged = judge(answers, ev.new_domain, g, labeller)
    accuracy_rules = [r.split(" ", 1)[0] for r in judged["rules"][:2]]
    rules = []
    for d, rows in test.items():
        p = paired([r[2] == r[1] for r in rows], [r[3] == r[1] for r in rows], g.confidence)
        rules.append(better(p, g.min_new_gain) if d == ev.new_domain
                     else not_worse(p, g.max_old_drop))
    return {"gate": verdict(accuracy_rules), "paired": verdict(rules),
            "labels": sum(judged["labels_answered"].values())}


def study(ev: Evidence, trials: int, g: GateSettings, seed: int = 0) -> dict:
    whole = decide(ev, {d: r[:g.holdout] for d, r in ev.test.items()}, ev.held_out, g)
    rng = random.Random(seed)
    counts = {"gate": {}, "paired": {}}
    labels = []
    for _ in range(trials):
        test = {d: rng.choices(r, k=min(g.holdout, len(r))) for d, r in ev.test.items()}
        held = rng.choices(ev.held_out, k=len(ev.held_out))
        got = decide(ev, test, held, g)
        for k in counts:
            counts[k][got[k]] = counts[k].get(got[k], 0) + 1
        labels.append(got["labels"])
    old = ev.test[ev.old_domain]
    return {"whole": whole, "counts": counts, "trials": trials,
            "promoted": {k: c.get(PASS, 0) / trials for k, c in counts.items()},
            "mean_labels": sum(labels) / trials,
            "old_accuracy": (sum(r[2] == r[1] for r in old) / len(old),
                             sum(r[3] == r[1] for r in old) / len(old)),
            "new_accuracy": tuple(sum(r[i] == r[1] for r in ev.test[ev.new_domain])
                                  / len(ev.test[ev.new_domain]) for i in (2, 3)),
            "old_disagreement": sum(r[2] != r[3] for r in old + ev.held_out)
            / len(old + ev.held_out)}


def markdown(result: dict) -> str:
    g = result["gate"]
    lines = [f"Rollout gate on {result['trials']} bootstrap draws of its evidence per candidate "
             f"(GateSettings defaults: old domains within {100 * g['max_old_drop']:g} points, "
             f"new domain better, {100 * g['confidence']:g} % confidence, test capped at "
             f"{g['holdout']}, at most {g['max_labels']} labels asked per old domain). v1 serves "
             f"{result['old']}. 'gate' is the shipped rule set (disagreement evidence on "
             "held-out texts, labels asked on disagreements); 'paired' the previous release's "
             "paired test on the test split alone.", "",
             "| new domain | candidate | old acc v1 → cand. | new acc v1 → cand. | old-domain "
             "disagreement | whole evidence (gate / paired) | promoted: gate | promoted: paired "
             "| labels asked (mean) |", "|---|---|---|---|---:|---|---:|---:|---:|"]
    for r in result["rows"]:
        s = r["study"]
        lines.append(f"| {r['new_domain']} | {r['kind']} | {100 * s['old_accuracy'][0]:.1f} → "
                     f"{100 * s['old_accuracy'][1]:.1f} | {100 * s['new_accuracy'][0]:.1f} → "
                     f"{100 * s['new_accuracy'][1]:.1f} | {100 * s['old_disagreement']:.1f} % | "
                     f"{s['whole']['gate']} / {s['whole']['paired']} | "
                     f"{100 * s['promoted']['gate']:.1f} % | {100 * s['promoted']['paired']:.1f} % "
                     f"| {s['mean_labels']:.0f} |")
    lines += ["", "Goals:"] + [f"- {'met' if ok else 'MISSED'}: {what}"
                               for what, ok in result["goals"]]
    return "\n".join(lines) + "\n"


def goals(rows: list[dict]) -> list[tuple[str, bool]]:
    out = []
    for r in rows:
        s, name = r["study"], f"{r['kind']} ({r['new_domain']})"
        if r["kind"] in BAD:
            out.append((f"{name} promoted in <= 5 % of draws ({100 * s['promoted']['gate']:.1f} %) "
                        f"and not on the whole evidence ({s['whole']['gate']})",
                        s["promoted"]["gate"] <= 0.05 and s["whole"]["gate"] != PASS))
        else:
            out.append((f"{name} promoted in >= 80 % of draws ({100 * s['promoted']['gate']:.1f} %)",
                        s["promoted"]["gate"] >= 0.8))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--v1", type=Path, help="an existing v1 run dir (nyt) to start from")
    p.add_argument("--new", default="movie,amazon,tweets")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--cache", type=Path, help="keep each candidate's answers here (resumable)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    g = GateSettings()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        work = Path(tmp)
        base = str(tiny_base(work / "tiny")) if args.quick else ""
        v1 = args.v1
        if v1 is None:
            v1 = work / "v1"
            extra = {"max_train": 96, "max_eval": 40, "min_steps": 0, "epochs": 1} if args.quick else {}
            run_train(TrainSettings(base_model=base, **extra), "nyt", v1)
        old = json.loads((v1 / "report.json").read_text())["domains_seen"][0]
        for new in args.new.split(","):
            for kind in args.kinds.split(","):
                hit = args.cache / f"{new}-{kind}.json" if args.cache and not args.quick else None
                if hit is not None and hit.is_file():
                    ev = Evidence(**json.loads(hit.read_text()))
                else:
                    cand = build(kind, v1, new, work / f"{new}-{kind}", work, base, args.quick)
                    ev = evidence(v1, cand, old, new, args.quick)
                    if hit is not None:
                        atomic_write_json(hit, dataclasses.asdict(ev))
                rows.append({"new_domain": new, "kind": kind,
                             "study": study(ev, args.trials, g)})
                print(f"{new} {kind}: {rows[-1]['study']['promoted']} whole "
                      f"{rows[-1]['study']['whole']}", file=sys.stderr, flush=True)
    result = {"old": old, "trials": args.trials, "gate": dataclasses.asdict(g), "rows": rows,
              "goals": goals(rows), "quick": args.quick}
    stem = "gate-quick" if args.quick else "gate"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", result, sort_keys=False)
    atomic_write_text(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
