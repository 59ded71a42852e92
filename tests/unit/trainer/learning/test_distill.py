"""Distillation from the version being replaced: which rows, and what the term measures."""

import pytest
import torch

from tests.models import tiny_base
from trainer.data.sources import Example
from trainer.learning.distill import Distillation, from_teacher
from trainer.model.lora import load_classifier

LABELS = ["negative", "neutral", "positive"]


def test_the_term_is_zero_at_the_teacher_and_grows_away_from_it():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 3.0]])
    d = Distillation(teacher, torch.tensor([True, True, False]), weight=2.0, temperature=2.0)
    assert d.loss(teacher.clone(), [0, 1, 2], 3).item() == pytest.approx(0.0, abs=1e-6)
    far = torch.zeros(3, 3)
    loss = d.loss(far, [0, 1, 2], 3)
    p = torch.softmax(teacher[:2] / 2, -1)
    kl = (p * (p.log() - torch.log(torch.full_like(p, 1 / 3)))).sum()
    assert loss.item() == pytest.approx(2.0 * 4 * kl.item() / 3, rel=1e-5)
    # rows outside the mask add nothing; an empty slice (DDP stand-in) adds nothing
    one = far[:1]  # the student's logits: one row per batch row
    assert d.loss(one, [2], 1).item() == 0.0 and d.loss(one, [0], 1, empty=True).item() == 0.0
    # DDP: a rank's part is scaled like fit.shard_loss (sum / global batch x world size)
    assert d.loss(one, [0], 3, size=2).item() == pytest.approx(
        2 * d.loss(one, [0], 3).item(), rel=1e-6)


def test_rows_replay_agree_all(tmp_path):
    model, tokenizer = load_classifier(tiny_base(tmp_path / "tiny"), LABELS, new_head=True)
    train = [Example(f"text number {i}", LABELS[i % 3], "nyt") for i in range(9)]
    replay = from_teacher(model, tokenizer, train, 6, LABELS, "replay", 1.0, 2.0, 32)
    assert replay.mask.tolist() == [True] * 6 + [False] * 3
    every = from_teacher(model, tokenizer, train, 6, LABELS, "all", 1.0, 2.0, 32)
    assert every.mask.all() and torch.equal(every.logits, replay.logits)
    agree = from_teacher(model, tokenizer, train, 6, LABELS, "agree", 1.0, 2.0, 32)
    right = replay.logits.argmax(-1) == torch.tensor([i % 3 for i in range(9)])
    assert agree is None or agree.mask.tolist() == (right & replay.mask).tolist()
    assert from_teacher(model, tokenizer, train, 6, LABELS, "replay", 0.0, 2.0, 32) is None
    with pytest.raises(ValueError, match="distill rows must be one of"):
        from_teacher(model, tokenizer, train, 6, LABELS, "some", 1.0, 2.0, 32)
