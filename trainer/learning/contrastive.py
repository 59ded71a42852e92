"""SetFit-style contrastive stage (`adapt --contrastive-pairs N`), before the classification pass.

With K labelled texts per class the head learns a boundary in a space the encoder never shaped
for this domain. SetFit (Tunstall et al. 2022) first fine-tunes the sentence encoder on pairs
of the labelled texts, cosine 1 for the same class and 0 for different classes, so K texts
teach O(K^2) pair relations. Here the pairs are scored on the vector the classification head
reads (BERT's pooled [CLS], a plain [CLS] elsewhere), through a LoRA adapter merged before the
usual pass. Each anchor is a new-domain text; its partners come from the new domain and the
replay exemplars, so the old domains' classes stay where the new domain's are pulled to.

The `setfit` package (1.2.0) was not used: it trains a mean-pooled sentence-transformers body
with its own head, not the sequence classifier this project archives and serves.
"""

import random
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from trainer.data.sources import Example
from trainer.learning.fit import lr_shape, seed_everything
from trainer.learning.precision import autocast
from trainer.model.lora import apply_lora, classification_head, merge

Pair = tuple[str, str, float]  # two texts and their target cosine: 1 same class, 0 different


def make_pairs(anchors: Sequence[Example], pool: Sequence[Example], per_anchor: int,
               seed: int) -> list[Pair]:
    """`per_anchor` pairs per anchor, half same-class, half other-class partners from `pool`
    (the anchor itself excluded); an anchor whose class has no other member gets negatives only."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for ex in pool:
        by_label.setdefault(ex.label, []).append(ex)
    pairs: list[Pair] = []
    for anchor in anchors:
        same = [ex for ex in by_label.get(anchor.label, []) if ex.text != anchor.text]
        other = [ex for label, rows in by_label.items() if label != anchor.label for ex in rows]
        for i in range(per_anchor):
            positive = i % 2 == 0 and bool(same)
            partners = same if positive else other
            if partners:
                pairs.append((anchor.text, rng.choice(partners).text, 1.0 if positive else 0.0))
    rng.shuffle(pairs)
    return pairs


def head_input(model: Any) -> Any:
    """The module whose input is the sentence vector the classifier reads."""
    head = classification_head(model)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no .classifier/.score head to read the "
                         f"sentence vector from; run adapt without --contrastive-pairs")
    return head


def sentence_vectors(model: Any, head: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """One vector per text: what `head` receives (its first [CLS] row when it gets a sequence)."""
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(**batch)
    finally:
        hook.remove()
    vectors = seen[0]
    return vectors[:, 0] if vectors.dim() == 3 else vectors


def contrastive_stage(model: Any, tokenizer: Any, pairs: Sequence[Pair], *, lr: float,
                      batch_size: int, max_length: int, seed: int, lora_r: int, lora_alpha: int,
                      lora_dropout: float, target_modules: Sequence[str],
                      precision: str = "fp32") -> Any:
    """One pass over `pairs` with the cosine-similarity loss (SetFit's), LoRA merged after."""
    seed_everything(seed)
    peft_model = apply_lora(model, lora_r, lora_alpha, lora_dropout, target_modules)
    head = head_input(peft_model.base_model.model)
    params = [p for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=lr)
    steps = -(-len(pairs) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_shape(steps, 0.1))
    peft_model.train()
    total = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        texts = [a for a, _, _ in chunk] + [b for _, b, _ in chunk]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt")
        with autocast(precision):
            vectors = sentence_vectors(peft_model, head, dict(batch)).float()
        left, right = vectors[:len(chunk)], vectors[len(chunk):]
        target = torch.tensor([y for _, _, y in chunk])
        loss = F.mse_loss(F.cosine_similarity(left, right), target)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        total += loss.item() * len(chunk)
    print(f"contrastive stage: {len(pairs)} pairs, mean cosine loss "
          f"{total / max(1, len(pairs)):.4f}", file=sys.stderr)
    peft_model.eval()
    return merge(peft_model)
