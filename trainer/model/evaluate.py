"""Score a classifier on labelled examples: accuracy, macro-F1 and per-class F1."""

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainer.data.sources import Example
from trainer.model.continual_metrics import scores


@torch.inference_mode()
def logits_of(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 128,
              batch_size: int = 64) -> torch.Tensor:
    """float32 logits in input order; texts sorted by length so padding stays small."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        for i, row in zip(idx, model(**batch).logits.float().cpu()):
            out[i] = row
    model.train(was_training)
    return torch.stack(out) if out else torch.empty(0)  # type: ignore[arg-type]


def predict_ids(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 64,
                max_length: int = 128) -> list[int]:
    """Batched argmax predictions."""
    return logits_of(model, tokenizer, texts, max_length, batch_size).argmax(-1).tolist()


def evaluate(model: Any, tokenizer: Any, examples: Sequence[Example], labels: Sequence[str],
             max_length: int = 128) -> dict[str, Any]:
    index = {label: i for i, label in enumerate(labels)}
    y_true = [index[ex.label] for ex in examples]
    y_pred = predict_ids(model, tokenizer, [ex.text for ex in examples], max_length=max_length)
    return scores(y_true, y_pred, labels)


def answers_by_domain(model: Any, tokenizer: Any, texts: Mapping[str, Sequence[str]],
                      max_length: int = 128) -> dict[str, list[int]]:
    """Predicted class ids of every domain's texts (for churn between two versions)."""
    return {d: predict_ids(model, tokenizer, list(t), max_length=max_length)
            for d, t in texts.items()}


def evaluate_domains(model: Any, tokenizer: Any, tests: Mapping[str, Sequence[Example]],
                     labels: Sequence[str], max_length: int = 128,
                     with_predictions: bool = False) -> dict[str, Any]:
    """Scores per domain plus pooled over all of them, from one prediction pass per domain
    (`with_predictions`: the class ids too, under "predictions")."""
    index = {label: i for i, label in enumerate(labels)}
    by_domain, all_true, all_pred, predictions = {}, [], [], {}
    for domain, examples in tests.items():
        y_true = [index[ex.label] for ex in examples]
        y_pred = predict_ids(model, tokenizer, [ex.text for ex in examples], max_length=max_length)
        by_domain[domain] = scores(y_true, y_pred, labels)
        predictions[domain] = y_pred
        all_true += y_true
        all_pred += y_pred
    out = {"by_domain": by_domain, "pooled": scores(all_true, all_pred, labels)}
    return {**out, "predictions": predictions} if with_predictions else out
