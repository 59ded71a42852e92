"""Shared fixtures: a tiny random BERT for fast unit tests, and small run dirs built from it."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Workers' statistics of this test session only (never a shared /tmp directory)."""
    path = tmp_path_factory.mktemp("stats")
    os.environ["DRIFTSERVE_STATS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT that uses MiniLM's real tokenizer (so real text works)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainer.lora import default_base_model

    out = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(default_base_model(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_settings(tiny_base: Path):
    from trainer.train import TrainSettings

    return TrainSettings(base_model=str(tiny_base), epochs=1, batch_size=16, max_train=64,
                         max_length=32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_settings) -> Path:
    """A real (tiny) train run on real nyt data: LoRA, merge, run dir with manifest."""
    from trainer.train import run_train

    out = tmp_path_factory.mktemp("runs") / "v1"
    run_train(tiny_settings, "nyt", out)
    return out
