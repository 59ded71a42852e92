"""`trainer train`: LoRA fine-tuning of a base classifier on one source, merged into a run dir."""

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from handlers.errors import IntegrityError
from handlers.features import REFERENCE_FILE
from handlers.manifest import sha256_file, verify_manifest
from trainer.common import config
from trainer.common.config import check, setting
from trainer.data.lineage import cap, source_record
from trainer.data.reference import calibrate
from trainer.data.reference_texts import (
    REFERENCE_TEXTS_FILE,
    build_reference_for,
    reference_texts_bytes,
)
from trainer.data.sources import Splits, fingerprint
from trainer.data.splits import load_training_data, say
from trainer.learning import distributed
from trainer.learning.balance import class_counts, effective_number_weights
from trainer.learning.class_mix import learnt_mix
from trainer.learning.fit import fit, plan_epochs, seed_everything
from trainer.learning.herding import STRATEGIES, ReplayBuffer
from trainer.learning.replay_buffer import BUFFER_FILE, buffer_bytes, grow_buffer, sizes_json
from trainer.learning.settings import FitSettings
from trainer.model.evaluate import evaluate
from trainer.model.lora import apply_lora, default_base_model, load_classifier, merge, parameter_counts
from trainer.model.quality import assess, exit_code, scores_line, warning_line
from trainer.model.rundir import REPORT_FILE, save_run

# Bumped when a run dir gains what `adapt` relies on (2: the class mix), so reuse retrains.
REPORT_VERSION = 2


@dataclass
class TrainSettings(FitSettings):
    base_model: str = setting("", "local Hugging Face model dir; empty = bundled all-MiniLM-L6-v2")
    labels: list[str] = setting([], "class names, comma-separated, in head order (empty: the "
                                    "labels found in the training data, sorted)")
    min_steps: int = setting(300, "optimiser steps, at least: small data gets more passes "
                                  "(up to --max-epochs)")
    max_train: int = setting(0, "cap on training examples (0 = all); for quick runs")
    max_eval: int = setting(0, "cap on val and test examples per domain (0 = all); quick runs")
    val_fraction: float = setting(0.15, "share of --data held out for validation (per label), "
                                        "unless --val-data is given")
    test_fraction: float = setting(0.15, "share of --data held out for the test, unless "
                                         "--test-data is given")
    seed: int = setting(0, "seed for splits, LoRA init and batch order")
    memory: int = setting(300, "source exemplars kept for replay (0 = none); `adapt --memory` "
                               "then sets the budget over all domains")
    selection: str = setting("herding", "how exemplars are picked: herding | random | reservoir")

    def validate(self) -> None:
        problems = self.fit_problems()
        problems += [f"{n} must be >= 0, got {getattr(self, n)}"
                     for n in ("min_steps", "max_train", "max_eval", "memory")
                     if getattr(self, n) < 0]
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1:
            problems.append("val_fraction + test_fraction must leave rows to train on")
        if self.labels and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            problems.append(f"labels must be >= 2 distinct names, got {self.labels}")
        if self.selection not in STRATEGIES:
            problems.append(f"selection must be one of {', '.join(STRATEGIES)}, "
                            f"got {self.selection!r}")
        check(problems, "train settings")

    def base_model_dir(self) -> Path:
        """The base model's directory, checked: a wrong path names itself and what was expected."""
        if not self.base_model:
            return default_base_model()
        path = Path(self.base_model)
        if not (path / "config.json").is_file() or not list(path.glob("*.safetensors")):
            raise FileNotFoundError(f"--base-model {path}: expected a local Hugging Face model "
                                    "directory with config.json and *.safetensors weights")
        return path


def train_fingerprint(settings: TrainSettings, source: str, data_hash: str) -> str:
    """Everything the trained weights depend on: a rerun with the same value can be skipped."""
    base = settings.base_model_dir()
    weights = sorted(base.glob("*.safetensors"))
    payload = {
        "settings": asdict(settings), "source": source, "data": data_hash,
        "base": [sha256_file(p) for p in weights + [base / "config.json"]],
        "torch": torch.__version__, "report": REPORT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def is_current(out: Path, fp: str) -> bool:
    """The run dir exists, is intact, and was built from exactly these inputs."""
    try:
        verify_manifest(out)
        return json.loads((Path(out) / REPORT_FILE).read_text()).get("fingerprint") == fp
    except (OSError, ValueError, IntegrityError):
        return False


def reference_texts(splits: dict[str, Splits], per_domain: int) -> dict[str, list[str]]:
    """Held-out (validation) texts of every domain -- its training texts where it has no
    validation rows: what the drift reference is built from."""
    return {d: [ex.text for ex in cap(s.val or s.train, per_domain)] for d, s in splits.items()}


def run_train(settings: TrainSettings, source: str, out: Path, reuse: bool = False,
              val_data: str | None = None, test_data: str | None = None,
              domain: str | None = None) -> dict[str, Any]:
    """Load and check all data first (a bad row stops before anything is written), then train."""
    started = time.time()
    data = load_training_data(source, settings.seed, settings.label_threshold, settings.labels,
                              val_data, test_data, (settings.val_fraction, settings.test_fraction),
                              domain)
    labels, splits = data.labels, data.splits
    train = [ex for s in splits.values() for ex in s.train]
    splits = {d: Splits(s.train, cap(s.val, settings.max_eval), cap(s.test, settings.max_eval))
              for d, s in splits.items()}
    val = [ex for s in splits.values() for ex in s.val]
    if settings.max_train:
        train = train[: settings.max_train]
    if distributed.is_main():
        say(data)
    fp = train_fingerprint(settings, source, fingerprint(train + val) + fingerprint(
        [ex for s in splits.values() for ex in s.test]))
    if reuse and is_current(out, fp):
        print(f"{out}: up to date (same settings, data and base model); reusing it",
              file=sys.stderr)
        return json.loads((Path(out) / REPORT_FILE).read_text())

    seed_everything(settings.seed)
    base, tokenizer = load_classifier(settings.base_model_dir(), labels, new_head=True)
    model = apply_lora(base, settings.lora_r, settings.lora_alpha, settings.lora_dropout,
                       settings.target_modules)
    counts = parameter_counts(model)
    epochs = plan_epochs(len(train), settings.batch_size, settings.epochs, settings.min_steps,
                         settings.max_epochs)
    index = {label: i for i, label in enumerate(labels)}
    weights = (effective_number_weights(class_counts([index[ex.label] for ex in train],
                                                     len(labels)), settings.beta)
               if settings.balance else None)
    print(f"training {counts['trainable']:,} of {counts['total']:,} parameters "
          f"({100 * counts['share']:.2f}%) on {len(train)} examples: up to {epochs} passes of "
          f"{-(-len(train) // settings.batch_size)} steps", file=sys.stderr)
    result = fit(model, tokenizer, train, val, labels, epochs=epochs,
                 batch_size=settings.batch_size, lr=settings.lr, max_length=settings.max_length,
                 seed=settings.seed, class_weights=(lambda _: weights) if weights is not None
                 else None, warmup=settings.lr_warmup, patience=settings.patience,
                 precision=settings.precision)
    if not distributed.is_main():  # rank 0 evaluates, herds and writes; the others are done
        return {"rank": distributed.world()[0], "run_dir_written_by": 0}
    merged = merge(model)
    test = [ex for s in splits.values() for ex in s.test]
    metrics = {name: evaluate(merged, tokenizer, part, labels, settings.max_length)
               for name, part in (("train", train), ("val", val), ("test", test)) if part}
    # Judged on the test split: validation picked the epoch, so its score is the best of many
    # looks, and a model trained on noise can look better than chance there.
    judged, rows = next((name, part) for name, part in (("test", test), ("val", val),
                                                         ("train", train)) if part)
    quality = assess(metrics[judged], train, rows, labels, settings.weak_margin, judged)
    per_domain = {d: evaluate(merged, tokenizer, s.test, labels, settings.max_length)
                  for d, s in splits.items() if s.test and len(splits) > 1}
    # The start of the adapt chain: a replay buffer and a one-row accuracy matrix.
    buffer = grow_buffer(merged, tokenizer, ReplayBuffer(), train, settings.memory,
                         settings.selection, settings.seed, settings.max_length)
    test_acc = {d: (per_domain[d] if d in per_domain else metrics["test"])["accuracy"]
                for d, s in splits.items() if s.test}
    held_out = reference_texts(splits, settings.reference_per_domain)
    report = {
        "kind": "train",
        "fingerprint": fp,
        "source": source,
        "split": data.plan,
        "domains": list(splits),
        "labels": labels,
        "settings": asdict(settings),
        "base_model": str(settings.base_model_dir()),
        "parameters": counts,
        "epochs_planned": epochs,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "examples_processed": result.examples_seen,
        "class_weights": None if weights is None else weights.tolist(),
        "class_mix": learnt_mix(train, labels, weights),
        "metrics": metrics,
        "quality": quality,
        "test_by_domain": per_domain,
        "domains_seen": list(test_acc),
        "domain_sources": {d: source_record(source, settings.seed, settings.label_threshold,
                                            settings.max_eval, splits[d].test, data.records[d])
                           for d in test_acc},
        "accuracy_matrix": [list(test_acc.values())],
        "replay_buffer": sizes_json(buffer),
        "reference_sizes": {d: len(t) for d, t in held_out.items()},
        "calibration": calibrate(merged, tokenizer, val, labels, settings.max_length),
        "wall_time_s": round(time.time() - started, 1),
        "world_size": distributed.world()[1],
        "versions": {"torch": torch.__version__},
    }
    reference = build_reference_for(merged, tokenizer, held_out, settings.drift_components,
                                    settings.max_length)
    reference.temperature = report["calibration"]["temperature"]
    reference.accuracy_fit = report["calibration"]["accuracy_fit"]
    save_run(out, merged, tokenizer, labels, report, extra={
        REFERENCE_FILE: reference.to_bytes(), BUFFER_FILE: buffer_bytes(buffer),
        REFERENCE_TEXTS_FILE: reference_texts_bytes(held_out)})
    if quality["weak"]:
        print(warning_line(quality, "train"), file=sys.stderr)
    print(scores_line("train", out, {d: per_domain.get(d, metrics.get("test")) for d in test_acc},
                      quality), file=sys.stderr)
    return report


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("train", help="LoRA-train a classifier and write a merged run dir")
    p.add_argument("--data", required=True,
                   help="built-in domain (nyt, movie, amazon, tweets) or a .jsonl/.csv file with "
                        "text, label and optional domain")
    p.add_argument("--val-data", help="your own validation file (default: a share of --data)")
    p.add_argument("--test-data", help="your own test file, or a built-in domain's test split "
                                        "(default: a share of --data)")
    p.add_argument("--domain", help="domain name of the rows of --data/--val-data/--test-data "
                                    "that name none (default: each file's name without suffix)")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--reuse", action="store_true",
                   help="skip training when --out was built from the same inputs")
    p.add_argument("--allow-weak", action="store_true",
                   help="exit 0 even when the model is weak (it is still marked weak)")
    config.add_arguments(p, TrainSettings)
    distributed.add_engine_arguments(p)

    def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        report = run_train(config.from_args(TrainSettings, args), args.data, Path(args.out),
                           args.reuse, args.val_data, args.test_data, args.domain)
        return report, exit_code(report, args.allow_weak)

    p.set_defaults(func=run)
