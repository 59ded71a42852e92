"""`trainer adapt`: run dir vN + a new domain -> vN+1 (replay + class-balanced LoRA, merged).

Recipe: verify and load vN -> check the new data against vN's labels -> training set = vN's replay
exemplars + the new domain's train split (or K shots per class) -> LoRA on vN's merged weights,
effective-number class weights over that whole set -> merge (serving cost never grows) -> score
every domain seen so far (one new row of the accuracy matrix) -> re-budget the replay buffer with
the new model's features -> write vN+1 atomically. Every input check runs before anything is
written.
"""

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from handlers.features import REFERENCE_FILE, Reference
from handlers.manifest import MANIFEST_NAME, sha256_file
from handlers.routing import with_experts
from trainer.common import config
from trainer.common.config import check, setting
from trainer.common.errors import DataError, SettingsError
from trainer.data.lineage import cap, source_record, test_splits
from trainer.data.reference import calibrate
from trainer.data.reference_texts import (
    REFERENCE_TEXTS_FILE,
    build_reference_for,
    read_reference_texts,
    reference_texts_bytes,
)
from trainer.data.sources import DOMAINS, SPLIT, Example, Splits, default_domain, load_source
from trainer.data.splits import load_test_data, without_test_rows
from trainer.learning import distributed
from trainer.learning.balance import (
    class_counts,
    deferred_weights,
    effective_number_weights,
    make_balanced_sampler,
)
from trainer.learning.class_mix import Mix, describe, learnt_mix, replay_scale
from trainer.learning.contrastive import contrastive_stage, make_pairs
from trainer.learning.distill import FORWARD_COST, ROWS, Distillation, from_teacher, unlabelled_rows
from trainer.learning.experts import read_router_texts, route_step, router_texts, routing_plan
from trainer.learning.fit import FitResult, fit, plan_epochs, seed_everything
from trainer.learning.herding import STRATEGIES, ReplayBuffer
from trainer.learning.replay_buffer import (
    BUFFER_FILE,
    buffer_bytes,
    by_group,
    grow_buffer,
    read_buffer,
    sizes_json,
)
from trainer.learning.self_training import pseudo_label, read_unlabelled
from trainer.learning.self_training import report as self_training_report
from trainer.learning.settings import FitSettings
from trainer.learning.traffic_mix import shift_to_traffic
from trainer.model import continual_metrics
from trainer.model.churn import churn_by_domain
from trainer.model.evaluate import answers_by_domain, evaluate_domains, logits_of
from trainer.model.lora import apply_lora, interpolate, merge, parameter_counts
from trainer.model.quality import assess, exit_code, scores_line, warning_line
from trainer.model.rundir import load_run, save_run

SELECTIONS = (*STRATEGIES, "none")
REPLAY_MIXES = ("learnt", "buffer")


@dataclass
class AdaptSettings(FitSettings):
    shots: int = setting(0, "labelled examples per class from the new domain (0 = its whole train split)")
    memory: int = setting(1000, "replay budget K: exemplars in all, split evenly over the "
                                "(domain, class) groups seen (bench/results/continual-sweep.md)")
    selection: str = setting("herding", "exemplar selection: herding | random | reservoir | none "
                                        "(none: no replay, and the buffer is emptied)")
    reherd: bool = setting(False, "re-select old groups from their exemplars with the new model")
    replay_ratio: float = setting(0.0, "share of each epoch drawn (with repeats) from the replay "
                                       "exemplars; 0 = every example once per epoch")
    balanced_sampler: bool = setting(False, "draw each epoch balanced over (domain, class) groups")
    defer_epochs: int = setting(0, "class weights only in the last N epochs (0 = in every epoch)")
    full_finetune: bool = setting(False, "train every weight instead of a LoRA adapter (baseline)")
    min_steps: int = setting(100, "optimiser steps, at least: few examples get more passes "
                                  "(up to --max-epochs)")
    max_train: int = setting(0, "cap on the new domain's training examples (0 = all); quick runs")
    max_eval: int = setting(0, "cap on the new domain's val and test examples (0 = all); kept for "
                               "every later step so the matrix compares like with like")
    seed: int = setting(0, "seed for the new domain's splits, LoRA init, order and selection")
    distill: float = setting(0.0, "weight of the distillation from vN (its soft targets) meant "
                                  "to keep old answers; 0 = off: on validation it cost as much "
                                  "new-domain gain as it saved churn (bench/results/"
                                  "distill-sweep.md)")
    distill_rows: str = setting("replay", "rows distilled: replay (old exemplars) | agree "
                                          "(those vN gets right) | all (new domain's too)")
    distill_temperature: float = setting(2.0, "softmax temperature of the distillation")
    distill_held_out: bool = setting(False, "also distil on half of the old domains' held-out "
                                            "texts (unlabelled; the gate uses the other half)")
    keep: float = setting(1.0, "share of the step's weight change kept (WiSE-FT interpolation "
                               "towards vN after merging); 1 = all of it")
    pseudo_share: float = setting(0.5, "with --unlabelled: share of the texts the first pass "
                                       "predicts as each class, most confident first, that "
                                       "join the second pass as pseudo-labels")
    traffic_mix: bool = setting(False, "with --unlabelled: estimate the new domain's class mix "
                                       "from its unlabelled texts (EM) and shift the new "
                                       "version's output bias to answer with it, where it "
                                       "is a routed expert (trainer/learning/traffic_mix.py; "
                                       "off: within the seed spread on the continual bench, "
                                       "bench/results/continual-few-shot.md)")
    replay_mix: str = setting("buffer", "class mix of each old domain's replay: buffer (every "
                                        "exemplar weighs the same) | learnt (scaled to the mix "
                                        "the domain was learnt with: fewer old answers changed, "
                                        "less new-domain gain; bench/results/distill-sweep.md)")
    min_val: int = setting(30, "a labelled file's validation rows, if fewer than this, join the "
                               "training rows: too few to pick an epoch by (0 = always keep "
                               "them apart)")
    route: bool = setting(True, "keep each old domain's answers: the new version carries the "
                                "versions that learnt its old domains and a text router sends "
                                "each text to its domain's version (one model's weights more "
                                "per old version, in memory and in the archive; "
                                "handlers/routing.py)")
    contrastive_pairs: int = setting(0, "SetFit-style contrastive stage before the classifier: "
                                        "pairs per labelled new-domain text (0 = off: on "
                                        "validation it changed more old answers for no gain; "
                                        "bench/results/distill-sweep-k8.md)")

    def validate(self) -> None:
        problems = self.fit_problems()
        problems += [f"{n} must be >= 0, got {getattr(self, n)}"
                     for n in ("shots", "memory", "max_train", "max_eval", "defer_epochs",
                               "min_steps", "contrastive_pairs", "min_val")
                     if getattr(self, n) < 0]
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {', '.join(SELECTIONS)}, "
                            f"got {self.selection!r}")
        if not 0 <= self.replay_ratio < 1:
            problems.append(f"replay_ratio must be in [0, 1), got {self.replay_ratio}")
        if self.replay_ratio and (self.balanced_sampler or self.selection == "none"):
            problems.append("replay_ratio needs replay and excludes balanced_sampler")
        if self.reherd and self.selection == "none":
            problems.append("reherd needs a selection other than none")
        if not 0 < self.pseudo_share <= 1:
            problems.append(f"pseudo_share must be in (0, 1], got {self.pseudo_share}")
        if not 0 < self.keep <= 1:
            problems.append(f"keep must be in (0, 1], got {self.keep}")
        if self.distill < 0 or self.distill_temperature <= 0:
            problems.append(f"distill must be >= 0 and distill_temperature > 0, got "
                            f"{self.distill} and {self.distill_temperature}")
        if self.replay_mix not in REPLAY_MIXES:
            problems.append(f"replay_mix must be one of {', '.join(REPLAY_MIXES)}, "
                            f"got {self.replay_mix!r}")
        if self.distill_rows not in ROWS:
            problems.append(f"distill_rows must be one of {', '.join(ROWS)}, "
                            f"got {self.distill_rows!r}")
        if self.defer_epochs > self.epochs:
            problems.append(f"defer_epochs must be <= epochs ({self.epochs}), "
                            f"got {self.defer_epochs}")
        check(problems, "adapt settings")


@dataclass
class NewDomain:
    """The one new domain of a step, checked against vN."""

    name: str
    train: list[Example]
    val: list[Example]  # empty with --shots
    test: list[Example]
    held_out: list[str]  # texts for the drift reference: the val split's, even with --shots
    test_how: dict[str, Any]  # how its test split is rebuilt (empty: a share of the source)


def new_domain(source: str, s: AdaptSettings, labels: Sequence[str], seen: Sequence[str],
               test_data: str | None = None, name: str | None = None) -> NewDomain:
    """With `test_data` none of `source` is held out for the test, and the test texts join the
    drift reference (a file of labelled traffic is usually too small to hold out enough).
    `name`: the domain of rows that name none (default: the file's stem)."""
    shares = (SPLIT[0], 0.0) if test_data else SPLIT
    home = default_domain(source, name)
    splits = load_source(source, s.seed, s.label_threshold, tuple(labels), shares, home)
    if len(splits) != 1:
        raise DataError(f"{source}: adapt takes one new domain per step, got {sorted(splits)}")
    (domain, split), = splits.items()
    how: dict[str, Any] = {} if source in DOMAINS else {"domain_default": home}
    if test_data:
        tests, how = load_test_data(test_data, s.seed, s.label_threshold, tuple(labels), home)
        if domain not in tests:
            raise DataError(f"--test-data {test_data}: no rows of domain {domain!r} (it has "
                            f"{sorted(tests)}); give rows a \"domain\" field to match {source}")
        split = Splits(without_test_rows(split.train, tests[domain], source, test_data),
                       without_test_rows(split.val, tests[domain], source, test_data),
                       tests[domain])
    every = split.train + split.val + split.test
    unknown = sorted({ex.label for ex in every} - set(labels))
    if unknown:
        raise DataError(f"{source}: label(s) {unknown} unknown to the model (labels {list(labels)})")
    if domain in seen:
        raise DataError(f"{source}: domain {domain!r} was already learnt (seen: {list(seen)}); "
                        f"give new data its own domain name")
    if not split.train:
        raise DataError(f"{source}: domain {domain!r} has no training examples")
    train = few_shot(split.train, s.shots, source) if s.shots else cap(split.train, s.max_train)
    val = [] if s.shots else cap(split.val, s.max_eval)
    folded = 0 < len(val) < s.min_val  # macro-F1 on a handful of rows picks epochs by chance
    if folded:
        print(f"note: {source}: its {len(val)} validation rows (< --min-val {s.min_val}) join "
              f"the {len(train)} training rows; epochs are picked on the training rows",
              file=sys.stderr)
        train, val = train + val, []
    # the drift reference and the gate's unlabelled evidence: texts no pass trained on
    held = (split.test if folded else split.val + (split.test if test_data else [])
            or split.train)
    held_out = [ex.text for ex in cap(held, s.reference_per_domain)]
    return NewDomain(domain, train, val, cap(split.test, s.max_eval), held_out, how)


def few_shot(train: list[Example], k: int, source: str) -> list[Example]:
    """The first k of every class in the (seeded, shuffled) train split; all classes must have k."""
    groups = by_group(train)
    short = {label: len(items) for (_, label), items in groups.items() if len(items) < k}
    if short:
        raise DataError(f"{source}: --shots {k} but these classes have fewer training "
                        f"examples: {short}")
    picked = {id(ex) for items in groups.values() for ex in items[:k]}
    return [ex for ex in train if id(ex) in picked]


def epoch_order(train: Sequence[Example], n_replay: int,
                s: AdaptSettings) -> Callable[[torch.Generator], list[int]] | None:
    """One epoch's example order: (domain, class)-balanced draws, a replay/new mix, or None
    (fit's plain shuffle). Replay exemplars are the first n_replay rows of `train`."""
    if s.balanced_sampler:
        groups = [(ex.domain, ex.label) for ex in train]

        def balanced(g: torch.Generator) -> list[int]:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            return list(make_balanced_sampler(groups, len(groups), seed))
        return balanced
    if not s.replay_ratio or not n_replay:
        return None
    n_new = len(train) - n_replay
    draws = round(s.replay_ratio / (1 - s.replay_ratio) * n_new)

    def mixed(g: torch.Generator) -> list[int]:
        laps = [torch.randperm(n_replay, generator=g) for _ in range(-(-draws // n_replay))]
        picks = (n_replay + torch.randperm(n_new, generator=g)).tolist()
        picks += torch.cat(laps)[:draws].tolist()
        return [picks[i] for i in torch.randperm(len(picks), generator=g).tolist()]
    return mixed


def train_step(model: Any, tokenizer: Any, train: Sequence[Example], val: Sequence[Example],
               labels: Sequence[str], s: AdaptSettings, n_replay: int = 0,
               regulariser: Callable[[Any], Callable[[], torch.Tensor]] | None = None,
               distillation: Distillation | None = None, mix: Mix | None = None
               ) -> tuple[Any, FitResult, dict[str, Any], list[float] | None]:
    """LoRA (or full) fine-tuning with the balancing options, then merge.

    Class weights count the whole training set of the step, never a batch. `regulariser(model)`
    (the model being trained) returns a penalty added to every step's loss; `distillation`
    (computed from the model before training) pulls its rows towards the old answers; `mix`
    (the old domains' learnt class mixes) scales the replay rows to them.
    """
    seed_everything(s.seed)
    before = ({n: p.detach().clone() for n, p in model.named_parameters()}
              if s.keep < 1 else {})
    if not s.full_finetune:
        model = apply_lora(model, s.lora_r, s.lora_alpha, s.lora_dropout, s.target_modules)
    penalty = regulariser(model) if regulariser else None
    counts = parameter_counts(model)
    index = {label: i for i, label in enumerate(labels)}
    weights = (effective_number_weights(class_counts([index[ex.label] for ex in train
                                                      if ex.label is not None],
                                                     len(labels)), s.beta)
               if s.balance else None)

    def class_weights(epoch: int) -> torch.Tensor | None:
        if weights is None or not s.defer_epochs:
            return weights
        return deferred_weights(epoch - 1, s.epochs, s.defer_epochs, weights)

    unlabelled = sum(ex.label is None for ex in train)
    print(f"training {counts['trainable']:,} of {counts['total']:,} parameters "
          f"({100 * counts['share']:.2f}%) on {len(train) - unlabelled} examples ({n_replay} "
          f"replayed)" + (f" and {unlabelled} unlabelled rows distilled" if unlabelled else ""),
          file=sys.stderr)
    epochs = plan_epochs(len(train), s.batch_size, s.epochs, s.min_steps, s.max_epochs)
    result = fit(model, tokenizer, train, val, labels, epochs=epochs, batch_size=s.batch_size,
                 lr=s.lr, max_length=s.max_length, seed=s.seed, class_weights=class_weights,
                 sampler=epoch_order(train, n_replay, s), warmup=s.lr_warmup,
                 patience=s.patience, precision=s.precision, penalty=penalty,
                 distillation=distillation,
                 row_scale=replay_scale(train, n_replay, mix, labels, weights) if mix else None)
    merged = interpolate(model if s.full_finetune else merge(model), before, s.keep)
    return merged, result, counts, None if weights is None else weights.tolist()


def square(matrix: list[list[float | None]]) -> bool:
    return all(len(row) == len(matrix) for row in matrix) and all(
        v is not None for i, row in enumerate(matrix) for v in row[: i + 1])


def calibrate_step(model: Any, tokenizer: Any, val_new: list[Example], labels: list[str],
                   max_length: int, source_run: Path) -> dict[str, Any]:
    """The new domain's validation split fits the temperature and the accuracy estimators; when
    it is too small (few-shot) the previous version's are kept rather than falling back."""
    fit = calibrate(model, tokenizer, val_new, labels, max_length)
    if not fit["fitted"] and (source_run / REFERENCE_FILE).is_file():
        previous = Reference.load(source_run / REFERENCE_FILE)
        fit["temperature"], fit["accuracy_fit"] = previous.temperature, previous.accuracy_fit
        fit["kept_from"] = str(source_run)
    return fit


def replay_mix(prev: dict[str, Any], seen: Sequence[str], s: AdaptSettings, replaying: bool,
               source_run: Path) -> Mix | None:
    """The old domains' learnt class mixes the replay is scaled to, when that is asked for."""
    if s.replay_mix != "learnt" or not replaying:
        return None
    mix = {d: m for d, m in prev.get("class_mix", {}).items() if d in seen}
    if not mix:
        print(f"note: {source_run}'s report records no class mix (made before it was kept); "
              f"its replay keeps the buffer's own mix", file=sys.stderr)
        return None
    print(f"replay scaled to the class mix each old domain was learnt with: {describe(mix)}",
          file=sys.stderr)
    return mix


def run_adapt(s: AdaptSettings, source_run: Path, data: str, out: Path,
              test_data: str | None = None, domain: str | None = None,
              unlabelled: str | None = None) -> dict[str, Any]:
    """Every check (manifest, labels, domains, test splits) runs before anything is written.
    `unlabelled`: texts of the new domain for self-training (trainer/learning/self_training.py)."""
    started = time.time()
    source_run, out = Path(source_run), Path(out)
    if out.resolve() == source_run.resolve():
        raise SettingsError(f"--out {out} must differ from --from: vN is kept for rollback")
    model, tokenizer, labels, prev = load_run(source_run, experts=False)  # verifies first
    parent = with_experts(source_run, model)  # answers as vN serves; only read before training
    if "domain_sources" not in prev or "accuracy_matrix" not in prev:
        raise DataError(f"{source_run}: report has no domain_sources/accuracy_matrix; "
                        f"it predates `adapt` -- retrain it with `trainer train`")
    buffer = read_buffer(source_run)
    seen = list(prev["domains_seen"])
    new = new_domain(data, s, labels, seen, test_data, domain)
    domain, train_new, val_new, test_new, held_new = (new.name, new.train, new.val, new.test,
                                                      new.held_out)
    if not test_new or len(held_new) < 2:
        raise DataError(f"{data}: domain {domain!r} needs a test split and >= 2 held-out "
                        f"texts for the drift reference")
    texts = read_unlabelled(unlabelled, test_new, train_new) if unlabelled else []
    if s.traffic_mix and not texts:
        print("note: --traffic-mix estimates the class mix from --unlabelled texts; none were "
              "given, so none is estimated", file=sys.stderr)
    held_out = {**read_reference_texts(source_run), domain: held_new}
    missing = [d for d in seen if d not in held_out]
    if missing:
        print(f"note: {source_run} carries no reference texts for {missing} (made before "
              f"{REFERENCE_TEXTS_FILE}); the drift reference covers {list(held_out)} only",
              file=sys.stderr)
    sources = {d: prev["domain_sources"][d] for d in seen}  # the report sorts its keys
    tests = {**test_splits(sources, labels), domain: test_new}
    replay = buffer.items() if s.selection != "none" else []
    foreign = sorted({ex.label for ex in replay} - set(labels))
    if foreign:
        raise DataError(f"{source_run}: replay buffer holds labels {foreign} not in {labels}")

    route_texts = routing_plan(s.route, router_texts(
        held_out, replay, seen, domain, train_new + val_new, texts,
        {ex.text for t in tests.values() for ex in t}, read_router_texts(source_run)), seen,
        domain)
    old_texts = {d: held_out[d] for d in seen if d in held_out}
    before = answers_by_domain(parent, tokenizer, {d: [ex.text for ex in tests[d]] for d in seen},
                               s.max_length)
    before_unlabelled = answers_by_domain(parent, tokenizer, old_texts, s.max_length)
    del parent
    step_train = replay + train_new
    extra = unlabelled_rows(held_out, seen) if s.distill and s.distill_held_out else []
    mix = replay_mix(prev, seen, s, bool(replay), source_run)
    pairs = (make_pairs(train_new, step_train, s.contrastive_pairs, s.seed)
             if s.contrastive_pairs else [])

    def one_pass(vn: Any, rows: list[Example]) -> tuple[Any, FitResult, dict[str, Any],
                                                        list[float] | None, Distillation | None]:
        teacher = from_teacher(vn, tokenizer, rows, len(replay), labels, s.distill_rows,
                               s.distill, s.distill_temperature, s.max_length)  # before LoRA
        if pairs:
            vn = contrastive_stage(vn, tokenizer, pairs, lr=s.lr, batch_size=s.batch_size,
                                   max_length=s.max_length, seed=s.seed, lora_r=s.lora_r,
                                   lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                                   target_modules=s.target_modules, precision=s.precision)
        return (*train_step(vn, tokenizer, rows, val_new, labels, s, len(replay),
                            distillation=teacher, mix=mix), teacher)

    def cost(result: FitResult, teacher: Distillation | None, rows: list[Example]) -> int:
        return (result.examples_seen + (round(FORWARD_COST * len(rows)) if teacher else 0)
                + 2 * len(pairs))  # a pair is two texts through the encoder

    fit_rows = step_train + extra
    merged, result, counts, weights, teacher = one_pass(model, fit_rows)
    examples_seen = cost(result, teacher, fit_rows)
    self_training, answers = None, None
    if texts:  # a second pass from vN, the first pass's confident answers as labels
        pseudo = pseudo_label(merged, tokenizer, texts, labels, domain, s.pseudo_share,
                              s.max_length)
        first = {"history": result.history, "best_epoch": result.best_epoch,
                 "examples_processed": examples_seen}
        fit_rows = step_train + pseudo.rows + extra
        print(f"self-training: second pass from {source_run.name}, with {len(pseudo.rows)} of "
              f"{len(texts)} unlabelled texts labelled by the first", file=sys.stderr)
        merged, result, counts, weights, teacher = one_pass(load_run(source_run, experts=False)[0],
                                                           fit_rows)
        examples_seen += cost(result, teacher, fit_rows) + round(FORWARD_COST * len(texts))
        answers = logits_of(merged, tokenizer, texts, s.max_length)
        self_training = {**self_training_report(
            pseudo, answers.argmax(-1).tolist(), labels, len(texts), s.pseudo_share),
            "first_pass": first}
    if not distributed.is_main():  # rank 0 evaluates, herds and writes; the others are done
        return {"rank": distributed.world()[0], "run_dir_written_by": 0}
    learnt = learnt_mix(fit_rows[len(replay):], labels, weights)  # the new domain's (and
    traffic = None  # the pseudo rows'): what its answers carry until shifted to the traffic's
    if answers is not None and s.traffic_mix:  # moved only where it answers its domain alone
        traffic = shift_to_traffic(merged, answers, labels, learnt[domain], bool(route_texts))
        if traffic["applied"]:
            learnt[domain] = traffic["estimated"]
    served, routing, route_files = merged, None, {}
    if route_texts:
        served, route_files, routing = route_step(
            source_run, merged, tokenizer, domain, route_texts,
            {d: [ex.text for ex in t] for d, t in tests.items()}, s.max_length, s.seed)
    scored = evaluate_domains(served, tokenizer, tests, labels, s.max_length,
                              with_predictions=True)
    churn = churn_by_domain(before, {d: scored["predictions"][d] for d in seen}, tests, labels,
                            before_unlabelled, answers_by_domain(served, tokenizer, old_texts,
                                                                 s.max_length))
    matrix = [[*row, None] for row in prev["accuracy_matrix"]]
    matrix.append([scored["by_domain"][d]["accuracy"] for d in tests])
    filled = [[0.0 if v is None else v for v in row] for row in matrix]  # j > i: unused by metrics
    next_buffer = (grow_buffer(merged, tokenizer, buffer, train_new, s.memory, s.selection, s.seed,
                               s.max_length, s.reherd)
                   if s.selection != "none" else ReplayBuffer())
    f1 = scored["pooled"]["per_class_f1"].values()
    quality = assess(scored["by_domain"][domain], step_train, test_new, labels, s.weak_margin,
                     f"{domain} test")  # the test split: validation picked the epoch
    reference = build_reference_for(served, tokenizer, held_out, s.drift_components, s.max_length)
    report = {
        "kind": "adapt",
        "step": len(matrix) - 1,
        "from": str(source_run),
        "from_manifest_sha256": sha256_file(source_run / MANIFEST_NAME),
        "source": data,
        "domain": domain,
        "labels": labels,
        "settings": asdict(s),
        "base_model": prev.get("base_model"),
        "parameters": counts,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "quality": quality,
        "training_set": {"new": len(train_new), "replay": len(replay),
                         "pseudo_labelled": len(fit_rows) - len(step_train) - len(extra),
                         "class_counts": dict(zip(labels, class_counts(
                             [labels.index(ex.label) for ex in replay + train_new], len(labels))))},
        "class_weights": weights,
        "class_mix": {**prev.get("class_mix", {}), **learnt},
        "traffic_mix": traffic,
        "replay_scaled_to": mix,
        "self_training": self_training,
        "contrastive": {"pairs": len(pairs), "same_class": sum(y == 1.0 for _, _, y in pairs)}
        if pairs else None,
        "distillation": None if teacher is None else {
            "rows": int(teacher.mask.sum()), "unlabelled_rows": len(extra),
            "weight": s.distill, "temperature": s.distill_temperature,
            "teacher_forward_examples": len(fit_rows)},
        "examples_processed": examples_seen,
        "examples_processed_total": examples_seen + prev.get(
            "examples_processed_total", prev.get("examples_processed", 0)),
        "domains_seen": list(tests),
        "domain_sources": {**prev["domain_sources"], domain: source_record(
            test_data or data, s.seed, s.label_threshold, s.max_eval, test_new, new.test_how)},
        "accuracy_matrix": matrix,
        "continual": continual_metrics.summary(filled) if square(matrix) else None,
        "test_by_domain": scored["by_domain"],
        "churn": churn,
        "metrics": {"test": scored["pooled"]},
        "macro_f1": scored["pooled"]["macro_f1"],
        "per_class_f1_spread": round(max(f1) - min(f1), 4),
        "replay_buffer": sizes_json(next_buffer),
        "reference_sizes": {d: len(t) for d, t in held_out.items()},
        "routing": routing,
        "calibration": calibrate_step(served, tokenizer, val_new, labels, s.max_length,
                                      source_run),
        "wall_time_s": round(time.time() - started, 1),
        "world_size": distributed.world()[1],
        "versions": {"torch": torch.__version__},
    }
    reference.temperature = report["calibration"]["temperature"]
    reference.accuracy_fit = report["calibration"]["accuracy_fit"]
    save_run(out, merged, tokenizer, labels, report,
             extra={BUFFER_FILE: buffer_bytes(next_buffer), REFERENCE_FILE: reference.to_bytes(),
                    REFERENCE_TEXTS_FILE: reference_texts_bytes(held_out), **route_files})
    for d, c in churn.items():
        t = c["test"]
        print(f"churn vs {source_run.name} on {d}: {100 * t['disagreement']:.1f} % answers changed "
              f"({100 * t['negative_flip_rate']:.1f} % right -> wrong, "
              f"{100 * t['positive_flip_rate']:.1f} % wrong -> right) on {t['n']} test texts"
              + (f"; {100 * c['unlabelled']['disagreement']:.1f} % of {c['unlabelled']['n']} "
                 "held-out texts" if "unlabelled" in c else ""), file=sys.stderr)
    if routing:
        print("routing: " + ", ".join(
            f"{d} -> {'this version' if e == 'model.safetensors' else e}, "
            f"{100 * routing['routed_to_own_version'].get(d, 0):.0f} % of its test texts sent there"
            for d, e in routing["experts"].items()), file=sys.stderr)
    if quality["weak"]:
        print(warning_line(quality, "adapt"), file=sys.stderr)
    print(scores_line("adapt", out, scored["by_domain"], quality), file=sys.stderr)
    return report


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("adapt", help="adapt run dir vN to a new domain, writing vN+1")
    p.add_argument("--from", dest="source_run", required=True, help="run directory vN")
    p.add_argument("--data", required=True,
                   help="new domain: built-in name (nyt, movie, amazon, tweets) or .jsonl/.csv")
    p.add_argument("--domain", help="the new domain's name, for rows of --data/--test-data that "
                                    "name none (default: the file's name without suffix)")
    p.add_argument("--out", required=True, help="run directory vN+1 to write")
    p.add_argument("--test-data", help="the new domain's test set: a file, or a built-in "
                                       "domain's test split (default: a share of --data)")
    p.add_argument("--unlabelled", help="texts of the new domain without labels (JSONL with "
                                        "\"text\", e.g. the captured traffic `sample` did not "
                                        "send for labelling): self-training's second pass")
    p.add_argument("--allow-weak", action="store_true",
                   help="exit 0 even when the model is weak (it is still marked weak)")
    config.add_arguments(p, AdaptSettings)
    distributed.add_engine_arguments(p)

    def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
        report = run_adapt(config.from_args(AdaptSettings, args), Path(args.source_run),
                           args.data, Path(args.out), args.test_data, args.domain,
                           args.unlabelled)
        return report, exit_code(report, args.allow_weak)

    p.set_defaults(func=run)
