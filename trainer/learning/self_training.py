"""Self-training on the new domain's unlabelled texts (`adapt --unlabelled FILE`).

After a drift the server holds many texts of the new domain and a labeller answers few. The
step's first pass learns the labelled rows as usual; its model then answers the unlabelled
texts, and the confident answers join a second pass, from vN again, as pseudo-labels.

Confirmation bias is the known failure: a model's most confident answers crowd into the class
it already prefers, and training on them teaches it that class harder. So the pick is made per
predicted class (class-balanced self-training, Zou et al. ECCV 2018): the most confident
`share` of the texts predicted as each class, which keeps the first pass's predicted class mix
instead of sharpening it; and the report compares the predicted class mix on the unlabelled
texts before and after the second pass, so a push towards one class shows as a number.
"""

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.common.errors import DataError
from trainer.data.sources import Example, read_texts
from trainer.model.evaluate import logits_of

PUSH_WARNING = 0.10  # a class gaining this much share of the answers on the unlabelled texts


@dataclass
class PseudoLabels:
    rows: list[Example]
    predicted_before: dict[str, float]  # the first pass's answers on every unlabelled text

    def counts(self, labels: Sequence[str]) -> dict[str, int]:
        return {label: sum(ex.label == label for ex in self.rows) for label in labels}


def read_unlabelled(path: str, test: Sequence[Example], labelled: Sequence[Example]
                    ) -> list[str]:
    """The file's distinct texts less those of the test split (a pseudo-label on a test text
    would score memory) and of the labelled rows (their label is already known); said, not
    refused, like the labelled path's overlap. A row with a label, or nothing left, stops."""
    texts = list(dict.fromkeys(read_texts(path, "--unlabelled", unlabelled=True)))
    in_test, known = {ex.text for ex in test}, {ex.text for ex in labelled}
    kept = [t for t in texts if t not in in_test and t not in known]
    dropped = {"in the test split": sum(t in in_test for t in texts),
               "labelled in --data": sum(t in known and t not in in_test for t in texts)}
    if any(dropped.values()):
        print(f"note: left {sum(dropped.values())} text(s) of {path} out of self-training: "
              + ", ".join(f"{n} {why}" for why, n in dropped.items() if n), file=sys.stderr)
    if not kept:
        raise DataError(f"--unlabelled {path}: no texts left ({len(texts)} read; every one is "
                        f"in the test split or labelled in --data)")
    return kept


def class_shares(ids: Sequence[int], labels: Sequence[str]) -> dict[str, float]:
    return {label: round(sum(i == c for i in ids) / max(1, len(ids)), 4)
            for c, label in enumerate(labels)}


def pseudo_label(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[str],
                 domain: str, share: float, max_length: int) -> PseudoLabels:
    """Per predicted class, its `share` most confident texts (at least one where it has any)."""
    probs = torch.softmax(logits_of(model, tokenizer, texts, max_length), dim=-1)
    confidence, predicted = probs.max(dim=-1)
    rows: list[tuple[int, int]] = []
    for c in range(len(labels)):
        mine = (predicted == c).nonzero().flatten()
        if not len(mine):
            continue
        keep = max(1, round(share * len(mine)))
        best = mine[confidence[mine].argsort(descending=True)[:keep]]
        rows += [(int(i), c) for i in best]
    rows.sort()  # text order, so the training rows do not come grouped by class
    return PseudoLabels([Example(texts[i], labels[c], domain) for i, c in rows],
                        class_shares(predicted.tolist(), labels))


def push(before: dict[str, float], after: dict[str, float]) -> tuple[str, float]:
    """The class whose share of the answers grew most, and by how much."""
    label = max(after, key=lambda k: after[k] - before.get(k, 0.0))
    return label, round(after[label] - before.get(label, 0.0), 4)


def report(pseudo: PseudoLabels, after_ids: Sequence[int], labels: Sequence[str], n_texts: int,
           share: float) -> dict[str, Any]:
    after = class_shares(after_ids, labels)
    label, grew = push(pseudo.predicted_before, after)
    line = (f"self-training: {len(pseudo.rows)} of {n_texts} unlabelled texts pseudo-labelled "
            f"({', '.join(f'{k} {v}' for k, v in pseudo.counts(labels).items())}); answers on "
            f"them, first pass -> second: " + ", ".join(
                f"{k} {100 * pseudo.predicted_before[k]:.0f} -> {100 * after[k]:.0f} %"
                for k in labels))
    print(line, file=sys.stderr)
    if grew >= PUSH_WARNING:
        print(f"WARNING: self-training pushed the answers on the unlabelled texts towards "
              f"{label!r} (+{100 * grew:.0f} points of share): its pseudo-labels may be "
              f"reinforcing the first pass's mistakes", file=sys.stderr)
    return {"unlabelled": n_texts, "share": share, "pseudo_labels": pseudo.counts(labels),
            "predicted_before": pseudo.predicted_before, "predicted_after": after,
            "largest_push": {"label": label, "share_gained": grew}}
