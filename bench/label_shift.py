"""How much of a new domain's gain is its class mix, and can the traffic tell the mix?

    .venv/bin/python bench/label_shift.py [--run RUN_DIR | --seeds 0,1,2] [--draws 20]

The source model (v1, trained on nyt) answers each later domain of the continual stream. Its
probabilities are rescaled by a class mix q of the new domain, p'(y|x) ~ p(y|x) q(y) / pi(y),
with pi the class mix v1 learnt (its report's class_mix: nyt's class counts times the class
weights it was trained with, which is the prior its answers carry; nyt's raw counts, used
before, over-state neutral), and scored on the domain's test split (the continual bench's:
first 400). q comes from:
  oracle  the labels of the domain's 1,000 training texts (an upper bound: no label needed
          at serving time would give it)
  EM      Saerens' EM over v1's probabilities on those texts, unlabelled
  BBSE    black-box shift estimation (Lipton et al. 2018): v1's mean probabilities on K
          labelled texts per class as the confusion matrix, the unlabelled texts' mean as the
          observation; K = 8 and 32, `--draws` random draws of the K
  EM is what `adapt --unlabelled` does to a routed expert (trainer/learning/traffic_mix.py),
there on the adapted version's answers. `--seeds` reads each seed's v1 from the continual
bench's cache. No training happens here; the gain with full data is in
bench/results/continual*.md.
Results: bench/results/label-shift.{json,md}.
"""

import argparse
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import nyt_v1  # noqa: E402
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.lineage import cap  # noqa: E402
from trainer.data.sources import load_source  # noqa: E402
from trainer.learning.traffic_mix import em_mix  # noqa: E402
from trainer.model.evaluate import logits_of  # noqa: E402
from trainer.model.rundir import load_run  # noqa: E402

NEW_DOMAINS = ("movie", "amazon", "tweets")
TRAIN, TEST = 1000, 400  # the continual bench's per-domain training texts and test split
SHOTS = (8, 32)


def mix(ids: torch.Tensor, k: int) -> torch.Tensor:
    counts = torch.bincount(ids, minlength=k).float()
    return counts / counts.sum()


def bbse_mix(confusion: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Solve confusion @ q = observed by least squares, clipped onto the simplex."""
    q = torch.linalg.lstsq(confusion, observed.unsqueeze(1)).solution.flatten().clamp(min=1e-3)
    return q / q.sum()


def domain_row(probs_test: torch.Tensor, y_test: torch.Tensor, probs_train: torch.Tensor,
               y_train: torch.Tensor, prior: torch.Tensor, draws: int) -> dict[str, Any]:
    k = prior.numel()

    def acc(q: torch.Tensor | None) -> float:
        p = probs_test if q is None else probs_test * q / prior
        return round(100 * float((p.argmax(1) == y_test).float().mean()), 2)

    truth = mix(y_train, k)
    em = em_mix(probs_train, prior)
    row: dict[str, Any] = {"true_mix": [round(float(x), 3) for x in truth],
                           "em_mix": [round(float(x), 3) for x in em],
                           "v1": acc(None), "oracle": acc(truth), "em": acc(em)}
    for shots in SHOTS:
        accs, errors = [], []
        for draw in range(draws):
            rng = random.Random(draw)
            picked = {c: rng.sample([i for i in range(len(y_train)) if y_train[i] == c], shots)
                      for c in range(k)}
            rest = sorted(set(range(len(y_train))) - {i for ids in picked.values() for i in ids})
            confusion = torch.stack([probs_train[picked[c]].mean(0) for c in range(k)], dim=1)
            q = bbse_mix(confusion, probs_train[rest].mean(0))
            accs.append(acc(q))
            errors.append(float((q - truth).abs().sum()))
        row[f"bbse_k{shots}"] = {"mean": round(statistics.fmean(accs), 2), "worst": min(accs),
                                 "l1_error": round(statistics.fmean(errors), 3)}
    return row


def markdown(result: dict[str, Any]) -> str:
    first = result["seeds"][0]
    lines = [f"v1 of each seed ({', '.join(str(r['seed']) for r in result['seeds'])}: "
             f"`{first['run']}` and its siblings), answering with the class mix it learnt "
             f"{first['learnt_mix']}; accuracy in points on each domain's test split ({TEST}); "
             f"EM over the domain's {TRAIN} training texts, unlabelled; BBSE over "
             f"{result['draws']} draws (mean, worst; L1 error of the mix).", "",
             "| domain | seed | true mix | v1 | oracle mix | EM mix (estimate) | "
             + " | ".join(f"BBSE K = {k}" for k in SHOTS) + " |",
             "|---|---:|---|---:|---:|---:|" + "---:|" * len(SHOTS)]
    for d in NEW_DOMAINS:
        for seed in result["seeds"]:
            r = seed["domains"][d]
            lines.append(
                f"| {d} | {seed['seed']} | {r['true_mix']} | {r['v1']} | {r['oracle']} "
                f"({r['oracle'] - r['v1']:+.1f}) | {r['em']} ({r['em'] - r['v1']:+.1f}; "
                f"{r['em_mix']}) | " + " | ".join(
                    f"{r[f'bbse_k{k}']['mean']} (worst {r[f'bbse_k{k}']['worst']}; L1 "
                    f"{r[f'bbse_k{k}']['l1_error']})" for k in SHOTS) + " |")
    gain = {m: statistics.fmean(r["domains"][d][m] - r["domains"][d]["v1"]
                                for r in result["seeds"] for d in NEW_DOMAINS)
            for m in ("oracle", "em")}
    worst = min(r["domains"][d]["em"] - r["domains"][d]["v1"]
                for r in result["seeds"] for d in NEW_DOMAINS)
    lines += ["", f"Mean gain over domains and seeds: oracle mix {gain['oracle']:+.1f}, EM "
              f"{gain['em']:+.1f} points (EM's worst domain and seed: {worst:+.1f})."]
    return "\n".join(lines) + "\n"


def seed_row(run: Path, seed: int, draws: int) -> dict[str, Any]:
    model, tokenizer, labels, report = load_run(run, experts=False)
    index = {label: i for i, label in enumerate(labels)}
    learnt = report.get("class_mix", {}).get("nyt")
    prior = (torch.tensor([learnt[label] for label in labels]) if learnt else
             mix(torch.tensor([index[ex.label] for ex in load_source("nyt", seed)["nyt"].train]),
                 len(labels)))
    domains = {}
    for d in NEW_DOMAINS:
        split = load_source(d, seed)[d]
        test, train = cap(split.test, TEST), cap(split.train, TRAIN)
        probs = [torch.softmax(logits_of(model, tokenizer, [ex.text for ex in rows]), -1)
                 for rows in (test, train)]
        ys = [torch.tensor([index[ex.label] for ex in rows]) for rows in (test, train)]
        domains[d] = domain_row(probs[0], ys[0], probs[1], ys[1], prior, draws)
        print(seed, d, domains[d], file=sys.stderr)
    return {"run": str(run), "seed": seed, "labels": labels,
            "learnt_mix": [round(float(x), 3) for x in prior], "domains": domains}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="one v1 run dir, with --seed its splits' seed "
                                            "(default: bench.models.nyt_v1, seed 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                   help="instead of --run: the continual bench's cached v1 of each seed")
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "label-shift")
    args = p.parse_args()
    if args.seeds:
        cache = nyt_v1().parents[1]  # .../continual-<key>/seed0/v1-herding -> continual-<key>
        runs = [(cache / f"seed{s}" / "v1-herding", s) for s in args.seeds]
        missing = [str(r) for r, _ in runs if not (r / "report.json").is_file()]
        if missing:
            p.error(f"--seeds: no cached v1 at {missing}; run bench/continual.py first")
    else:
        runs = [(args.run or nyt_v1(), args.seed)]
    result = {"draws": args.draws, "seeds": [seed_row(r, s, args.draws) for r, s in runs]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), result, sort_keys=False)
    atomic_write_text(args.out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
