"""Do `trainer train`'s DEFAULT flags learn on data of any size? Every VADER domain at 300 and
1,000 rows, 3-class and 2-class (neutral dropped), each seed, plus nyt with all its rows, all
through the JSONL path a user takes (`--data file.jsonl --test-data test.jsonl`, nothing else).

    .venv/bin/python bench/defaults.py               # MiniLM, the full table (~2-3 h on 2 cores)
    .venv/bin/python bench/defaults.py --seeds 0     # one seed
    .venv/bin/python bench/defaults.py --quick       # tiny random BERT, 2 small cells (smoke test)

Each cell is a fresh `python -m trainer train` process; finished cells are cached under
bench/results/tmp/defaults keyed by their inputs, so a rerun resumes. Goal per cell: test
macro-F1 at least 0.25 above always answering the training majority class, no class with F1 0.
Writes defaults.json and defaults.md into --out.
"""

import argparse
import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.common.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data.sources import DOMAINS, Example, load_source  # noqa: E402
from trainer.learning.train import TrainSettings  # noqa: E402
from trainer.model.evaluate import scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOAL_GAIN = 0.25


def cells(seeds: list[int], sizes: list[int], domains: list[str], full: bool) -> list[dict]:
    """Seed-major order (the all-rows cells after the first seed), so a cut-off run still has
    whole seeds."""
    out = []
    for i, s in enumerate(seeds):
        out += [{"domain": d, "rows": n, "classes": k, "seed": s}
                for n in sizes for k in (3, 2) for d in domains]
        if full and i == 0:
            out += [{"domain": "nyt", "rows": 0, "classes": k, "seed": s} for k in (3, 2)]
    return out


def cell_data(cell: dict, tmp: Path) -> tuple[Path, Path, list[Example], list[Example]]:
    """The user's training file (N rows of the domain's train+val pool) and test file (the
    domain's test split); neutral dropped for the 2-class form."""
    split = load_source(cell["domain"], seed=cell["seed"])[cell["domain"]]
    keep = (lambda ex: ex.label != "neutral") if cell["classes"] == 2 else (lambda ex: True)
    pool = [ex for ex in split.train + split.val if keep(ex)]
    random.Random(cell["seed"]).shuffle(pool)
    train = pool[: cell["rows"]] if cell["rows"] else pool
    test = [ex for ex in split.test if keep(ex)]
    paths = []
    for name, rows in (("train", train), ("test", test)):
        path = tmp / f"{cell['domain']}_{name}.jsonl"
        path.write_text("".join(json.dumps({"text": ex.text, "label": ex.label}) + "\n"
                                for ex in rows))
        paths.append(path)
    return paths[0], paths[1], train, test


def cached_path(cell: dict, base_model: str, cache: Path) -> Path:
    key = hashlib.sha256(json.dumps({**cell, "base": base_model}, sort_keys=True).encode())
    return cache / f"{key.hexdigest()[:16]}.json"


def load_cached(path: Path, defaults: dict) -> dict | None:
    """A finished cell, unless train's defaults changed since (then it is stale)."""
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    return result if result.get("defaults", defaults) == defaults else None


def run_cell(cell: dict, base_model: str, threads: int, cache: Path) -> dict[str, Any]:
    """One cell, or its cached result when neither the cell nor train's defaults changed."""
    defaults = dataclasses.asdict(TrainSettings())
    cached = cached_path(cell, base_model, cache)
    if (hit := load_cached(cached, defaults)) is not None:
        return hit
    with tempfile.TemporaryDirectory(prefix="defaults-") as tmp:
        tmp = Path(tmp)
        train_file, test_file, train, test = cell_data(cell, tmp)
        cmd = [sys.executable, "-m", "trainer", "train", "--data", str(train_file),
               "--test-data", str(test_file), "--out", str(tmp / "run")]
        if base_model:
            cmd += ["--base-model", base_model]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        started = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        seconds = time.time() - started
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"cell {cell} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    labels = report["labels"]
    index = {label: i for i, label in enumerate(labels)}
    majority = Counter(ex.label for ex in train).most_common(1)[0][0]
    baseline = scores([index[ex.label] for ex in test], [index[majority]] * len(test), labels)
    test_scores = report["metrics"]["test"]
    result = {
        **cell, "train_rows": report["split"]["sizes"]["train"], "test_rows": len(test),
        "labels": labels, "exit_code": proc.returncode, "weak": report["quality"]["weak"],
        "epochs_planned": report["epochs_planned"], "best_epoch": report["best_epoch"],
        "epochs_run": len(report["history"]),
        "accuracy": test_scores["accuracy"], "macro_f1": test_scores["macro_f1"],
        "per_class_f1": test_scores["per_class_f1"],
        "majority_macro_f1": baseline["macro_f1"], "majority_accuracy": baseline["accuracy"],
        "gain": round(test_scores["macro_f1"] - baseline["macro_f1"], 4),
        "seconds": round(seconds, 1), "threads": threads, "defaults": defaults,
    }
    result["meets_goal"] = bool(result["gain"] >= GOAL_GAIN
                                and min(result["per_class_f1"].values()) > 0)
    atomic_write_json(cached, result)
    print(f"{cell}: macro-F1 {result['macro_f1']:.3f} (majority {result['majority_macro_f1']:.3f}) "
          f"acc {result['accuracy']:.3f} {'ok' if result['meets_goal'] else 'MISSED'} "
          f"{seconds:.0f}s", file=sys.stderr)
    return result


def table(results: list[dict]) -> str:
    rows = ["| domain | rows (train) | classes | seed | test macro-F1 | majority macro-F1 | gain | "
            "min class F1 | accuracy | passes (best) | weak flag | goal |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in results:
        rows.append(
            f"| {r['domain']} | {r['rows'] or 'all'} ({r['train_rows']}) | {r['classes']} | "
            f"{r['seed']} | {r['macro_f1']:.3f} | {r['majority_macro_f1']:.3f} | {r['gain']:+.3f} "
            f"| {min(r['per_class_f1'].values()):.3f} | {r['accuracy']:.3f} | "
            f"{r['epochs_run']}/{r['epochs_planned']} ({r['best_epoch']}) | "
            f"{'weak' if r['weak'] else '—'} | {'met' if r['meets_goal'] else 'MISSED'} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated (default: 0,1)")
    p.add_argument("--sizes", default="300,1000", help="training-file rows (default: 300,1000)")
    p.add_argument("--domains", default=",".join(DOMAINS))
    p.add_argument("--no-full", action="store_true", help="skip the nyt all-rows cells")
    p.add_argument("--jobs", type=int, default=2, help="cells at a time (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default: 1)")
    p.add_argument("--base-model", default="", help="default: the bundled MiniLM")
    p.add_argument("--quick", action="store_true", help="tiny random BERT, 2 small cells")
    p.add_argument("--report-only", action="store_true",
                   help="write the table from the cells finished so far; run nothing")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = [int(s) for s in args.sizes.split(",")]
    todo = cells(seeds, sizes, args.domains.split(","), not args.no_full)
    base, name = args.base_model, "defaults"
    if args.quick:
        from tests.models import tiny_base
        base = str(tiny_base(Path(tempfile.mkdtemp(prefix="tiny-bert-"))))
        todo, name = [{"domain": "tweets", "rows": 120, "classes": k, "seed": 0} for k in (3, 2)], \
            "defaults-quick"
    cache = Path(args.out) / "tmp" / name
    if args.report_only:
        defaults = dataclasses.asdict(TrainSettings())
        results = [r for c in todo if (r := load_cached(cached_path(c, base, cache), defaults))]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda c: run_cell(c, base, args.threads, cache), todo))
    met = sum(r["meets_goal"] for r in results)
    summary = {"cells": len(results), "met": met, "goal": f"macro-F1 >= majority + {GOAL_GAIN}, "
               "no class F1 0", "quick": args.quick, "results": results}
    out = Path(args.out)
    atomic_write_json(out / f"{name}.json", summary)
    text = (f"`trainer train` with default flags through the JSONL path: {met}/{len(results)} "
            f"cells meet the goal (test macro-F1 >= majority-class + {GOAL_GAIN}, no class F1 0)."
            "\n\n" + table(results) + "\n")
    atomic_write_text(out / f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
