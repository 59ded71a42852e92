"""The training loop shared by train and adapt: LoRA steps, validation each epoch, best kept."""

import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from trainer.data.sources import Example
from trainer.learning import distributed
from trainer.learning.distill import Distillation
from trainer.learning.precision import autocast
from trainer.model.evaluate import evaluate


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_epoch: int
    examples_seen: int


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _batches(n: int, batch_size: int, generator: torch.Generator,
             sampler: Callable[[torch.Generator], Sequence[int]] | None) -> list[list[int]]:
    order = list(sampler(generator)) if sampler else torch.randperm(n, generator=generator).tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def lr_shape(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate multiplier per step: linear warm-up, then linear decay to 0."""
    ramp = max(1, round(warmup * total_steps)) if warmup else 0

    def shape(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        return max(0.0, 1.0 - (step - ramp) / max(1, total_steps - ramp))
    return shape


def plan_epochs(n_train: int, batch_size: int, epochs: int, min_steps: int,
                max_epochs: int) -> int:
    """At least `epochs` passes and at least `min_steps` optimiser steps (small data gets more
    passes), never more than `max_epochs` passes."""
    steps_per_epoch = max(1, -(-n_train // batch_size))
    return max(1, min(max_epochs, max(epochs, -(-min_steps // steps_per_epoch))))


def shard_loss(logits: torch.Tensor, targets: torch.Tensor, batch_targets: torch.Tensor,
               weights: torch.Tensor | None, size: int, empty: bool = False,
               scale: torch.Tensor | None = None,
               batch_scale: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's part of the class-weighted mean loss over the GLOBAL batch (`batch_targets`),
    times the world size because DDP averages gradients: the ranks' gradients then average to
    the single-process one. An empty slice (its rows only a stand-in) contributes zero. Rows
    with target -1 (unlabelled, there for the distillation) take no part. `scale` and
    `batch_scale` (this rank's rows, the global batch's) multiply each row's weight."""
    keep, labelled = targets >= 0, batch_targets >= 0
    if not bool(labelled.any()):
        return logits.sum() * 0.0
    per_example = F.cross_entropy(logits[keep], targets[keep], weight=weights, reduction="none")
    mass = (weights[batch_targets[labelled]] if weights is not None
            else torch.ones(int(labelled.sum()), device=logits.device))
    if scale is not None and batch_scale is not None:
        per_example = per_example * scale[keep]
        mass = mass * batch_scale[labelled]
    return per_example.sum() / mass.sum() * (0.0 if empty else float(size))


def fit(model: Any, tokenizer: Any, train: Sequence[Example], val: Sequence[Example],
        labels: Sequence[str], *, epochs: int, batch_size: int, lr: float, max_length: int,
        seed: int, class_weights: Callable[[int], torch.Tensor | None] | None = None,
        sampler: Callable[[torch.Generator], Sequence[int]] | None = None,
        warmup: float = 0.0, patience: int = 0, progress: bool = True,
        precision: str = "fp32", penalty: Callable[[], torch.Tensor] | None = None,
        distillation: Distillation | None = None,
        row_scale: Sequence[float] | None = None) -> FitResult:
    """Train the trainable parameters; restore the epoch with the best validation macro-F1.

    `class_weights(epoch)` gives the loss weights for that epoch (None: plain cross-entropy),
    which is how deferred re-weighting switches on late. `sampler(generator)` returns one
    epoch's example order (default: a seeded shuffle). The learning rate rises linearly over
    the first `warmup` share of the steps (a fresh head at a LoRA learning rate otherwise
    jumps to the majority class), then decays linearly to 0. `patience` > 0 stops after that
    many epochs without a better validation macro-F1. Rows labelled None are unlabelled: only
    the distillation sees them. `precision` "bf16" autocasts the forward
    passes (training and validation); `penalty()` is added to each step's loss (a regulariser
    such as EWC's); `distillation` adds the pull towards the previous version's soft targets on
    its rows. `row_scale` multiplies each training row's loss weight (replay's class mix).
    """
    index = {label: i for i, label in enumerate(labels)}
    rank, size = distributed.world()
    device = distributed.device()
    model.to(device)
    targets = torch.tensor([index.get(ex.label, -1) for ex in train], device=device)
    scales = (torch.tensor(list(row_scale), dtype=torch.float32, device=device)
              if row_scale is not None else None)
    # One process: the model itself. Several: DDP averages gradients over the ranks' slices.
    forward = (torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None) if size > 1 else model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_shape(epochs * -(-len(train) // batch_size), warmup))
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state, seen = [], (-1.0, 0), None, 0
    for epoch in range(1, epochs + 1):
        model.train()
        weights = class_weights(epoch) if class_weights else None
        weights = weights.to(device) if weights is not None else None
        total = 0.0
        batches = _batches(len(train), batch_size, generator, sampler)
        bar = tqdm(batches, desc=f"epoch {epoch}/{epochs}", file=sys.stderr,
                   disable=not progress or not sys.stderr.isatty(),  # else: the epoch line
                   leave=False)
        for idx in bar:
            mine = distributed.shard(idx, rank, size)
            rows = mine or idx[:1]  # an empty slice still runs the step DDP waits for
            batch = tokenizer([train[i].text for i in rows], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt").to(device)
            with autocast(precision):
                logits = forward(**batch).logits
            loss = shard_loss(logits.float(), targets[rows], targets[idx], weights, size,
                              empty=not mine,
                              scale=None if scales is None else scales[rows],
                              batch_scale=None if scales is None else scales[idx])
            if distillation is not None:
                loss = loss + distillation.loss(logits.float(), rows, len(idx), size,
                                                empty=not mine)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            batch_loss = distributed.all_sum(loss.item() / size)
            total += batch_loss * len(idx)
            seen += len(idx)
            bar.set_postfix(loss=f"{batch_loss:.3f}")
        with autocast(precision):
            val_scores = evaluate(model, tokenizer, val or [ex for ex in train if ex.label],
                                  labels, max_length)
        history.append({"epoch": epoch, "train_loss": round(total / max(1, len(train)), 4),
                        "val_accuracy": val_scores["accuracy"],
                        "val_macro_f1": val_scores["macro_f1"]})
        print(f"epoch {epoch}: loss {history[-1]['train_loss']:.4f} "
              f"val acc {val_scores['accuracy']:.4f} macro-F1 {val_scores['macro_f1']:.4f}",
              file=sys.stderr)
        if val_scores["macro_f1"] > best[0]:
            best = (val_scores["macro_f1"], epoch)
            best_state = {n: p.detach().clone() for n, p in model.named_parameters()
                          if p.requires_grad}
        elif patience and epoch - best[1] >= patience:
            print(f"early stop: no better validation macro-F1 for {patience} epochs; "
                  f"keeping epoch {best[1]}", file=sys.stderr)
            break
    if best_state is not None:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    model.eval()
    return FitResult(history, best[1], seen)
