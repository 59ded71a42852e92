"""The guard against useless models: is validation macro-F1 clearly above always answering the
majority class, and does every class get predicted? Said in one line, recorded in the report."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

from trainer.continual_metrics import scores
from trainer.data import Example
from trainer.errors import EXIT_OK, EXIT_WEAK, DataError


def majority_baseline(train: Sequence[Example], val: Sequence[Example],
                      labels: Sequence[str]) -> dict[str, Any]:
    """Scores on `val` of a model that always answers the training set's most common class."""
    majority = Counter(ex.label for ex in train).most_common(1)[0][0]
    index = {label: i for i, label in enumerate(labels)}
    baseline = scores([index[ex.label] for ex in val], [index[majority]] * len(val), labels)
    return {"label": majority, "macro_f1": baseline["macro_f1"], "accuracy": baseline["accuracy"]}


MIN_SUPPORT = 5  # validation rows a class needs before "never predicted" says anything


def assess(val_scores: dict[str, Any], train: Sequence[Example], val: Sequence[Example],
           labels: Sequence[str], margin: float) -> dict[str, Any]:
    """`weak` when macro-F1 < baseline + margin, or a class with at least MIN_SUPPORT
    validation rows is never predicted (or never predicted right: F1 0). A rarer class cannot
    show it: 1 neutral row among 15 labelled movie reviews is missed by a good model too,
    while a model that always answers one class still fails the macro-F1 rule."""
    base = majority_baseline(train, val, labels)
    support = Counter(ex.label for ex in val)
    judged = [label for label in labels if support[label] >= MIN_SUPPORT]
    never = [label for label in judged if val_scores["predicted"].get(label, 0) == 0]
    dead = [label for label in judged if label not in never
            and val_scores["per_class_f1"].get(label, 0.0) == 0.0]
    reasons = []
    if val_scores["macro_f1"] < base["macro_f1"] + margin:
        reasons.append(f"validation macro-F1 {val_scores['macro_f1']:.3f} is not {margin:.2f} "
                       f"above the {base['macro_f1']:.3f} of always answering {base['label']!r}")
    if never:
        reasons.append(f"class(es) {never} never predicted on {len(val)} validation rows")
    if dead:
        reasons.append(f"class(es) {dead} never predicted right on {len(val)} validation rows "
                       "(F1 0)")
    return {"weak": bool(reasons), "reasons": reasons, "majority_baseline": base,
            "val_macro_f1": val_scores["macro_f1"], "margin": margin, "never_predicted": never,
            "f1_zero": dead, "too_rare_to_judge": {label: support[label] for label in labels
                                                   if label not in judged}}


def exit_code(report: dict[str, Any], allow_weak: bool) -> int:
    """train/adapt: EXIT_WEAK for a weak run unless the user said --allow-weak."""
    return EXIT_WEAK if report.get("quality", {}).get("weak") and not allow_weak else EXIT_OK


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
