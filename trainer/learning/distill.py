"""Distillation from the version being replaced, so an update changes few old answers.

vN is already merged and frozen, so its soft targets are computed once, before training, for the
rows of the step's training set (the same answers a second model would give at every step, at a
fraction of the cost). Which rows get the term:

- `replay`: the old domains' exemplars (LwF-style soft targets where the old answers matter);
- `agree`:  the replay exemplars vN gets right (positive-congruent / focal distillation, Yan et
  al. CVPR 2021: keep the answers that were right, let the wrong ones move);
- `all`:    every row, the new domain's included (LwF, Li & Hoiem 2016).

Old-domain texts the teacher never trained on carry its function where replay exemplars (which
it memorised) cannot: with `held_out`, half of every old domain's held-out texts (those the run
dir keeps for the drift reference) join the step as unlabelled rows, distilled only. Which half
is fixed by a hash of the text (`distil_half`); the rollout gate then measures that candidate's
disagreement only on the other half and on the test splits, so training to agree never biases
its evidence.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from trainer.data.reference_texts import distil_half
from trainer.data.sources import Example
from trainer.model.evaluate import logits_of

ROWS = ("replay", "agree", "all")
FORWARD_COST = 1 / 3  # a forward-only pass, in training examples (forward + backward ~ 3 forwards)


@dataclass
class Distillation:
    """vN's logits for every training row, and which rows are pulled towards them."""

    logits: torch.Tensor  # N x C
    mask: torch.Tensor  # N, bool
    weight: float
    temperature: float

    def loss(self, student: torch.Tensor, rows: Sequence[int], batch_size: int,
             size: int = 1, empty: bool = False) -> torch.Tensor:
        """weight * T^2 * KL(teacher || student) summed over this rank's masked rows, divided by
        the GLOBAL batch size and times the world size, like `fit.shard_loss`."""
        idx = torch.as_tensor(list(rows), device=self.logits.device)
        keep = self.mask[idx]
        if empty or not bool(keep.any()):
            return student.sum() * 0.0
        t = self.temperature
        target = F.log_softmax(self.logits[idx][keep].to(student.device) / t, dim=-1)
        log_p = F.log_softmax(student[keep.to(student.device)] / t, dim=-1)
        kl = F.kl_div(log_p, target, log_target=True, reduction="sum")
        return self.weight * t * t * kl / batch_size * float(size)


def unlabelled_rows(held_out: Mapping[str, Sequence[str]], domains: Sequence[str]
                    ) -> list[Example]:
    """The distillable half of the old domains' held-out texts, as rows without a label."""
    return [Example(t, None, d) for d in domains for t in held_out.get(d, [])  # type: ignore[arg-type]
            if distil_half(t)]


def from_teacher(teacher: Any, tokenizer: Any, train: Sequence[Example], n_replay: int,
                 labels: Sequence[str], rows: str, weight: float, temperature: float,
                 max_length: int) -> Distillation | None:
    """Soft targets of `teacher` for `train` (its first `n_replay` rows are the replay
    exemplars; rows labelled None are always distilled); None when the weight is 0 or no row
    qualifies."""
    if rows not in ROWS:
        raise ValueError(f"distill rows must be one of {ROWS}, got {rows!r}")
    if weight <= 0 or not train:
        return None
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[: len(train) if rows == "all" else n_replay] = True
    logits = logits_of(teacher, tokenizer, [ex.text for ex in train], max_length)
    if rows == "agree":
        index = {label: i for i, label in enumerate(labels)}
        right = logits.argmax(-1) == torch.tensor([index.get(ex.label, -1) for ex in train])
        mask &= right
    mask |= torch.tensor([ex.label is None for ex in train], dtype=torch.bool)
    if not bool(mask.any()):
        return None
    return Distillation(logits, mask, weight, temperature)
