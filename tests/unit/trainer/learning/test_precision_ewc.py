"""bf16 autocast training and the EWC regulariser of the continual benchmark (tiny BERT)."""

from dataclasses import replace

import pytest
import torch

from bench import ewc
from trainer.common.errors import SettingsError
from trainer.data.sources import load_source
from trainer.learning.adapt import AdaptSettings, train_step
from trainer.learning.precision import autocast
from trainer.learning.train import TrainSettings, run_train
from trainer.model.lora import apply_lora, load_classifier
from trainer.model.rundir import load_run

LABELS = ["negative", "neutral", "positive"]


def test_autocast_names_the_bad_precision():
    with pytest.raises(ValueError, match="fp16"):
        autocast("fp16")
    with pytest.raises(SettingsError, match="precision must be one of fp32, bf16, got 'fp8'"):
        TrainSettings(precision="fp8").validate()
    with pytest.raises(SettingsError, match="precision"):
        AdaptSettings(precision="half").validate()


def test_bf16_training_saves_an_fp32_model_close_to_fp32_training(tiny_settings, tmp_path):
    """Autocast only: the merged weights and the scores are fp32, and training moved them."""
    s = replace(tiny_settings, precision="bf16")
    report = run_train(s, "nyt", tmp_path / "bf16")
    model, _, _, saved = load_run(tmp_path / "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert saved["settings"]["precision"] == "bf16"
    fp32 = run_train(tiny_settings, "nyt", tmp_path / "fp32")
    a, _, _, _ = load_run(tmp_path / "fp32")
    diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), a.parameters()))
    assert 0 < diff < 0.05  # bf16 rounding changes the steps a little, not the model
    assert abs(report["metrics"]["test"]["accuracy"] - fp32["metrics"]["test"]["accuracy"]) < 0.1


@pytest.fixture(scope="module")
def nyt_train():
    return load_source("nyt", 0)["nyt"].train[:48]


def test_fisher_covers_the_lora_targets_and_head(tiny_base, nyt_train):
    model, tokenizer = load_classifier(tiny_base, LABELS, new_head=True)
    names = ewc.anchored_names(model, [])
    assert sorted({n.rsplit(".", 2)[-2] for n in names}) == ["classifier", "query", "value"]
    fisher = ewc.fisher(model, tokenizer, nyt_train[:8], LABELS, names, 32)
    assert set(fisher) == set(names)
    assert all(f.shape == dict(model.named_parameters())[n].shape for n, f in fisher.items())
    assert all((f >= 0).all() for f in fisher.values()) and sum(f.sum() for f in fisher.values()) > 0
    assert all(p.requires_grad for p in model.parameters())  # restored after the Fisher pass


def test_penalty_is_zero_at_the_anchor_and_grows_with_the_update(tiny_base, nyt_train):
    model, tokenizer = load_classifier(tiny_base, LABELS, new_head=True)
    names = ewc.anchored_names(model, [])
    fisher = ewc.fisher(model, tokenizer, nyt_train[:8], LABELS, names, 32)
    peft = apply_lora(model, 4, 8, 0.0, [])
    value = ewc.penalty(peft, fisher, 100.0)
    assert value().item() == 0.0
    with torch.no_grad():
        for p in peft.parameters():
            if p.requires_grad:
                p.add_(0.05)
    moved = value()
    moved.backward()
    assert moved.item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in peft.named_parameters() if "lora_A" in n)


def test_a_strong_penalty_keeps_the_merged_model_near_the_old_one(tiny_base, nyt_train):
    """The regulariser reaches the optimiser: lambda large -> a much smaller merged update."""
    s = AdaptSettings(epochs=2, min_steps=0, patience=0, lr=5e-3, lr_warmup=0.0, balance=False,
                      selection="none", max_length=32)

    def update(lam: float) -> float:
        old, tokenizer = load_classifier(tiny_base, LABELS, new_head=True)
        before = {n: p.detach().clone() for n, p in old.named_parameters()}
        names = ewc.anchored_names(old, [])
        fisher = ewc.fisher(old, tokenizer, nyt_train[:16], LABELS, names, 32)
        # A Fisher of ones everywhere it was computed: the penalty then bounds every update.
        fisher = {n: torch.ones_like(f) for n, f in fisher.items()}
        merged, _, _, _ = train_step(old, tokenizer, nyt_train, [], LABELS, s,
                                     regulariser=lambda m: ewc.penalty(m, fisher, lam))
        after = dict(merged.named_parameters())
        return sum(((after[n] - before[n]) ** 2).sum().item() for n in names)

    assert update(1e4) < 0.1 * update(0.0)
