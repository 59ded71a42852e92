"""The guard against useless models: is held-out macro-F1 clearly above chance (answers that
carry no information about the label) and above always answering the majority class, and does
every class get predicted? Said in one line, recorded in the report."""

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.common.errors import EXIT_OK, EXIT_WEAK, DataError
from trainer.data.sources import Example
from trainer.model.continual_metrics import scores


def majority_baseline(train: Sequence[Example], val: Sequence[Example],
                      labels: Sequence[str]) -> dict[str, Any]:
    """Scores on `val` of a model that always answers the training set's most common class."""
    majority = Counter(ex.label for ex in train).most_common(1)[0][0]
    index = {label: i for i, label in enumerate(labels)}
    baseline = scores([index[ex.label] for ex in val], [index[majority]] * len(val), labels)
    return {"label": majority, "macro_f1": baseline["macro_f1"], "accuracy": baseline["accuracy"]}


MIN_SUPPORT = 5  # held-out rows a class needs before "never predicted" says anything
CHANCE_CONFIDENCE = 0.95  # how sure the guard must be that the answers beat chance
PERMUTATIONS = 2000


def chance_baseline(support: Mapping[str, int], predicted: Mapping[str, int],
                    labels: Sequence[str], seed: int = 0) -> dict[str, float]:
    """Macro-F1 of answers that know nothing of the text: the model's own answers shuffled
    against the true labels (both class shares kept). Its mean is what guessing at the
    model's class shares scores -- about 1/K, well above always answering the majority class
    for macro-F1 -- and the shuffles give a one-sided permutation test of the real score.
    Only counts are needed: a shuffle's F1 of class k is 2 TP_k / (true_k + predicted_k)."""
    true = np.repeat(np.arange(len(labels)), [support.get(label, 0) for label in labels])
    pred = np.repeat(np.arange(len(labels)), [predicted.get(label, 0) for label in labels])
    if len(true) != len(pred) or not len(true):
        raise ValueError(f"{len(true)} true labels but {len(pred)} answers")
    shuffled = np.random.default_rng(seed).permuted(np.tile(pred, (PERMUTATIONS, 1)), axis=1)
    f1 = np.zeros((PERMUTATIONS, len(labels)))
    present = []
    for k, label in enumerate(labels):
        both = support.get(label, 0) + predicted.get(label, 0)
        if both:  # a class neither true nor predicted is left out, as in macro_f1
            f1[:, k] = 2 * (shuffled[:, true == k] == k).sum(axis=1) / both
            present.append(k)
    null = f1[:, present].mean(axis=1)
    return {"mean": float(null.mean()), "null": null}


def assess(val_scores: dict[str, Any], train: Sequence[Example], val: Sequence[Example],
           labels: Sequence[str], margin: float, split: str = "validation") -> dict[str, Any]:
    """`weak` unless macro-F1 on `val` (held-out rows; name them in `split`) beats chance
    (the permutation test above, at CHANCE_CONFIDENCE) and is `margin` above both chance's mean
    and always answering the majority class; also weak when a class with at least MIN_SUPPORT
    held-out rows is never predicted (or never predicted right: F1 0). A rarer class cannot
    show it: 1 neutral row among 15 labelled movie reviews is missed by a good model too,
    while a model that always answers one class still fails the macro-F1 rule."""
    base = majority_baseline(train, val, labels)
    support = Counter(ex.label for ex in val)
    chance = chance_baseline(support, val_scores["predicted"], labels)
    observed = val_scores["macro_f1"]
    # Scores are rounded to 4 places: a shuffle that ties the real answers counts against them.
    p_value = (1 + int((chance["null"] >= observed - 1e-4).sum())) / (PERMUTATIONS + 1)
    bar = max(base["macro_f1"], chance["mean"])
    against = f"always answering {base['label']!r}" if bar == base["macro_f1"] else \
        "answers shuffled against the labels (chance)"
    judged = [label for label in labels if support[label] >= MIN_SUPPORT]
    never = [label for label in judged if val_scores["predicted"].get(label, 0) == 0]
    dead = [label for label in judged if label not in never
            and val_scores["per_class_f1"].get(label, 0.0) == 0.0]
    reasons = []
    if observed < bar + margin:
        reasons.append(f"{split} macro-F1 {observed:.3f} is not {margin:.2f} above the "
                       f"{bar:.3f} of {against}")
    elif p_value > 1 - CHANCE_CONFIDENCE:
        reasons.append(f"{split} macro-F1 {observed:.3f} on {len(val)} rows is not above chance "
                       f"at {CHANCE_CONFIDENCE:.0%} confidence (permutation p = {p_value:.3f})")
    if never:
        reasons.append(f"class(es) {never} never predicted on {len(val)} {split} rows")
    if dead:
        reasons.append(f"class(es) {dead} never predicted right on {len(val)} {split} rows "
                       "(F1 0)")
    return {"weak": bool(reasons), "reasons": reasons, "majority_baseline": base,
            "chance_baseline": {"macro_f1": round(chance["mean"], 4), "p_value": round(p_value, 4),
                                "confidence": CHANCE_CONFIDENCE},
            "judged_on": {"split": split, "rows": len(val)},
            "val_macro_f1": observed, "margin": margin, "never_predicted": never,
            "f1_zero": dead, "too_rare_to_judge": {label: support[label] for label in labels
                                                   if label not in judged}}


def exit_code(report: dict[str, Any], allow_weak: bool) -> int:
    """train/adapt: EXIT_WEAK for a weak run unless the user said --allow-weak."""
    return EXIT_WEAK if report.get("quality", {}).get("weak") and not allow_weak else EXIT_OK


def scores_line(verb: str, out: Path, by_domain: Mapping[str, Mapping[str, Any]],
                quality: Mapping[str, Any]) -> str:
    """The one human line train and adapt end with: where the run went, its test scores."""
    scored = ", ".join(f"{d} accuracy {s['accuracy']:.3f} macro-F1 {s['macro_f1']:.3f} "
                       f"(n={s['n']})" for d, s in by_domain.items())
    return f"{verb} wrote {out}: test {scored}" + ("; WEAK (see above)" if quality["weak"] else "")


def warning_line(quality: dict[str, Any], verb: str) -> str:
    """The one line a weak run prints: the numbers and what to try."""
    return (f"WEAK MODEL ({verb}): {'; '.join(quality['reasons'])}. Try more labelled rows per "
            "class, more steps (--min-steps), a lower --lr, or check the labels; "
            "archive/rollout refuse this run unless --allow-weak")


def refuse_weak(report: dict[str, Any], where: str, allow_weak: bool) -> None:
    """archive and rollout: a weak run is an error unless the user says --allow-weak."""
    quality = report.get("quality") or {}
    if quality.get("weak") and not allow_weak:
        raise DataError(f"{where} is marked weak ({'; '.join(quality['reasons'])}); "
                         "retrain it, or pass --allow-weak to use it anyway")
