"""The label-free accuracy estimate against the truth: per domain and 50/50 mixtures, for v1 and
an adapted version.

    .venv/bin/python bench/accuracy_estimate.py [--v1 RUN_DIR]

v1 is MiniLM trained on nyt (default: the continual bench's seed-0 v1, or a fresh `train` when
that is missing); v2 is `adapt` onto movie at K = 32 with the shipped defaults. For each version
and every built-in domain's whole test split: true accuracy, the estimate the server would
report (mean calibrated confidence, temperature from the version's own validation data) and
the raw mean confidence (temperature 1). A mixture's numbers are the means of its two halves
(equal sizes). Goal (issue 14): |estimate - truth| <= 5 points in every cell.
Results: bench/results/accuracy-estimate.{json,md}.
"""

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.models import nyt_v1  # noqa: E402
from handlers.calibration import estimated_accuracy  # noqa: E402
from handlers.features import REFERENCE_FILE, Reference  # noqa: E402
from handlers.manifest import write_manifest  # noqa: E402
from handlers.runtime import ModelRuntime, RuntimeSettings  # noqa: E402
from trainer.adapt import AdaptSettings, run_adapt  # noqa: E402
from trainer.artifacts import atomic_write_json, atomic_write_text  # noqa: E402
from trainer.data import DOMAINS, load_source  # noqa: E402
from trainer.reference import calibrate  # noqa: E402
from trainer.rundir import load_run  # noqa: E402
from trainer.train import TrainSettings  # noqa: E402

T = TrainSettings()
GOAL = 0.05


def temperature_of(run: Path) -> dict[str, Any]:
    """The run's own fit; runs made before calibration existed are fitted here, the same way,
    on the validation split of the domain they were trained on."""
    report = json.loads((run / "report.json").read_text())
    if "calibration" in report:
        return report["calibration"]
    if Reference.load(run / REFERENCE_FILE).temperature != 1.0:
        return {"temperature": Reference.load(run / REFERENCE_FILE).temperature}
    model, tokenizer, labels, _ = load_run(run)
    val = load_source(report["source"], T.seed, T.label_threshold, tuple(labels))
    return calibrate(model, tokenizer, val[report["source"]].val, labels)


def with_temperature(run: Path, out: Path) -> Path:
    """A copy of a run made before calibration existed, with the temperature `train` would have
    stored (so that `adapt` carries it as it would)."""
    shutil.copytree(run, out)
    reference = Reference.load(out / REFERENCE_FILE)
    reference.temperature = temperature_of(run)["temperature"]
    (out / REFERENCE_FILE).write_bytes(reference.to_bytes())
    write_manifest(out)
    return out


def cells(run: Path) -> dict[str, Any]:
    rt = ModelRuntime.load(run, settings=RuntimeSettings(monitor=False))
    temperature = temperature_of(run)["temperature"]
    assert Reference.load(run / REFERENCE_FILE)  # the archive would carry it
    index = {label: i for i, label in enumerate(rt.labels)}
    out: dict[str, Any] = {}
    for domain in DOMAINS:
        test = load_source(domain, T.seed, T.label_threshold, tuple(rt.labels))[domain].test
        probs = torch.cat([rt.probabilities([ex.text for ex in test[i:i + 64]])
                           for i in range(0, len(test), 64)]).numpy()
        truth = np.asarray([index[ex.label] for ex in test])
        out[domain] = {"n": len(test), "accuracy": float((probs.argmax(1) == truth).mean()),
                       "estimate": estimated_accuracy(probs, temperature),
                       "raw_confidence": estimated_accuracy(probs, 1.0)}
    for a, b in itertools.combinations(DOMAINS, 2):
        out[f"{a}+{b}"] = {k: (out[a][k] + out[b][k]) / 2
                           for k in ("accuracy", "estimate", "raw_confidence")}
    return {"temperature": temperature, "cells": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--v1", type=Path, help="a MiniLM run trained on nyt")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/accuracy-estimate")
    args = p.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="estimate-") as tmp:
        v1 = args.v1 or nyt_v1()
        if "calibration" not in json.loads((v1 / "report.json").read_text()):
            v1 = with_temperature(v1, Path(tmp) / "v1")
        v2 = Path(tmp) / "v2"
        run_adapt(AdaptSettings(shots=32), v1, "movie", v2)
        versions = {"v1 (nyt)": cells(v1), "v2 (nyt → movie, K=32)": cells(v2)}
    result = {"goal_points": 100 * GOAL, "versions": versions}
    lines = ["| cell | " + " | ".join(f"{v}: true / est. / raw" for v in versions) + " |",
             "|---|" + "---:|" * len(versions)]
    misses = 0
    for cell in next(iter(versions.values()))["cells"]:
        row = []
        for v in versions.values():
            c = v["cells"][cell]
            miss = abs(c["estimate"] - c["accuracy"]) > GOAL
            misses += miss
            row.append(f"{100 * c['accuracy']:.1f} / {'**' if miss else ''}"
                       f"{100 * c['estimate']:.1f}{'**' if miss else ''} / "
                       f"{100 * c['raw_confidence']:.1f}")
        lines.append(f"| {cell} | " + " | ".join(row) + " |")
    total = len(lines) - 2
    result["cells_missing_goal"] = misses
    text = (f"Label-free accuracy estimate vs truth (points; **bold**: off by more than "
            f"{100 * GOAL:.0f}); temperatures " + ", ".join(
                f"{k} {v['temperature']:.2f}" for k, v in versions.items())
            + f". {misses} of {total * len(versions)} cells miss the goal.\n\n"
            + "\n".join(lines) + "\n")
    atomic_write_json(args.out.with_suffix(".json"), result, sort_keys=False)
    atomic_write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
