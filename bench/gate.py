"""Does the rollout gate decide on evidence? The demo's candidates, holdouts resampled.

    .venv/bin/python bench/gate.py                       # trains v1 (nyt) and the K=32 candidates
    .venv/bin/python bench/gate.py --v1 RUN_DIR          # start from an existing v1 run dir
    .venv/bin/python bench/gate.py --quick               # tiny random BERT (smoke test)

The stream is `make demo`'s: v1 on nyt, then `trainer adapt --shots 32` for movie, amazon and
tweets, each candidate gated against the version before it. Both versions answer every test
sentence once (in process, fp32, as served); each resample then draws a holdout of h sentences
per domain without replacement and applies (a) the shipped paired gate and (b) the old rule on
two point estimates (new domain strictly better, old domains within 2 points). Reported per
candidate and h: how often each gate's decision differs from the one it takes on the whole test
split. The paired gate may answer INCONCLUSIVE; it should almost never contradict itself.
"""

import argparse
import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models import tiny_base  # noqa: E402
from trainer.adapt import AdaptSettings, run_adapt  # noqa: E402
from trainer.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.evaluate import predict_ids  # noqa: E402
from trainer.gate import FAIL, INCONCLUSIVE, PASS, accuracy_rules, verdict  # noqa: E402
from trainer.lineage import test_splits  # noqa: E402
from trainer.rollout import GateSettings  # noqa: E402
from trainer.rundir import load_run  # noqa: E402
from trainer.train import TrainSettings, run_train  # noqa: E402

STREAM = ["nyt", "movie", "amazon", "tweets"]


def correct_answers(run: Path, tests: dict[str, list]) -> dict[str, list[bool]]:
    model, tokenizer, labels, report = load_run(run)
    length = report["settings"]["max_length"]
    return {d: [labels[p] == ex.label for p, ex in zip(
        predict_ids(model, tokenizer, [ex.text for ex in exs], max_length=length), exs)]
        for d, exs in tests.items()}


def paired_gate(old: dict, new: dict, new_domain: str, g: GateSettings) -> str:
    """The shipped gate's accuracy rules (`trainer.gate`), without latency and errors."""
    rules = accuracy_rules(old, new, new_domain, g.confidence, g.max_old_drop, g.min_new_gain)
    return verdict([outcome for outcome, _, _ in rules.values()])


def point_gate(old: dict, new: dict, new_domain: str, g: GateSettings) -> str:
    """The gate before this change: two accuracies compared as if they were exact."""
    ok = []
    for d in new:
        a, b = sum(old[d]) / len(old[d]), sum(new[d]) / len(new[d])
        ok.append(b > a + g.min_new_gain if d == new_domain else b >= a - g.max_old_drop)
    return PASS if all(ok) else FAIL


def resample(old: dict, new: dict, h: int, rng: random.Random) -> tuple[dict, dict]:
    idx = {d: rng.sample(range(len(old[d])), min(h, len(old[d]))) for d in old}
    return ({d: [old[d][i] for i in ix] for d, ix in idx.items()},
            {d: [new[d][i] for i in ix] for d, ix in idx.items()})


def study(old: dict, new: dict, new_domain: str, sizes: list[int], trials: int,
          g: GateSettings, seed: int) -> list[dict]:
    rows = []
    whole = {"paired": paired_gate(old, new, new_domain, g),
             "point": point_gate(old, new, new_domain, g)}
    for h in sizes:
        rng = random.Random(seed + h)
        counts = {"paired": {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}, "point": {PASS: 0, FAIL: 0}}
        for _ in range(trials):
            o, n = resample(old, new, h, rng)
            counts["paired"][paired_gate(o, n, new_domain, g)] += 1
            counts["point"][point_gate(o, n, new_domain, g)] += 1
        conclusive_other = sum(v for k, v in counts["paired"].items()
                               if k not in (whole["paired"], INCONCLUSIVE))
        rows.append({"holdout": h, "whole_split": whole, "counts": counts,
                     "paired_contradicts": conclusive_other / trials,
                     "paired_inconclusive": counts["paired"][INCONCLUSIVE] / trials,
                     "point_flips": 1 - counts["point"][whole["point"]] / trials})
    return rows


def build_stream(v1: Path | None, work: Path, base: str, quick: bool) -> list[Path]:
    runs = []
    if v1 is None:
        v1 = work / "v1"
        extra = {"max_train": 96, "max_eval": 40, "min_steps": 0, "epochs": 1} if quick else {}
        run_train(TrainSettings(base_model=base, precision="fp32" if quick else "bf16", **extra),
                  STREAM[0], v1)
    runs.append(v1)
    for i, domain in enumerate(STREAM[1:], start=2):
        out = work / f"v{i}"
        extra = {"max_eval": 40, "min_steps": 0, "epochs": 1} if quick else {}
        run_adapt(AdaptSettings(shots=4 if quick else 32, precision="fp32" if quick else "bf16",
                                **extra), runs[-1], domain, out)
        runs.append(out)
    return runs


def markdown(result: dict) -> str:
    lines = [f"Gate decisions on resampled holdouts ({result['trials']} draws per row; accuracy "
             f"rules only, GateSettings defaults: old domains within "
             f"{100 * result['gate']['max_old_drop']:g} points, new domain better, one-sided "
             f"{100 * result['gate']['confidence']:g} % bounds). 'whole split' is each gate's "
             f"decision on every test sentence.", "",
             "| candidate | holdout / domain | whole split (paired / point) | paired: contradicts "
             "whole split | paired: inconclusive | point estimates: flips |",
             "|---|---:|---|---:|---:|---:|"]
    for step in result["steps"]:
        for r in step["rows"]:
            lines.append(f"| {step['candidate']} | {r['holdout']} | {r['whole_split']['paired']} "
                         f"/ {r['whole_split']['point']} | {100 * r['paired_contradicts']:.1f} % "
                         f"| {100 * r['paired_inconclusive']:.1f} % | "
                         f"{100 * r['point_flips']:.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--v1", type=Path, help="an existing v1 run dir (nyt) to start from")
    p.add_argument("--sizes", default="100,300,1000", help="holdout sentences per domain")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",")]
    g = GateSettings()
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        base = str(tiny_base(Path(tmp) / "tiny")) if args.quick else ""
        runs = build_stream(args.v1, Path(tmp), base, args.quick)
        steps = []
        for before, after in zip(runs, runs[1:]):
            report = json.loads((after / "report.json").read_text())
            tests = test_splits(report["domain_sources"], report["labels"])
            old, new = correct_answers(before, tests), correct_answers(after, tests)
            steps.append({"candidate": f"{after.name} ({report['domain']})",
                          "test_sizes": {d: len(t) for d, t in tests.items()},
                          "rows": study(old, new, report["domain"], sizes, args.trials, g, 0)})
            print(markdown({"trials": args.trials, "gate": dataclasses.asdict(g),
                            "steps": steps}), file=sys.stderr)
    result = {"trials": args.trials, "gate": dataclasses.asdict(g), "steps": steps,
              "quick": args.quick}
    stem = "gate-quick" if args.quick else "gate"
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{stem}.json", result, sort_keys=False)
    atomic_write_text(args.out / f"{stem}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
