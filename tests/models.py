"""Models the tests (and the benches' --quick smoke modes) build for themselves: no weights are
committed, and a tiny random BERT with MiniLM's real tokenizer keeps unit tests fast."""

from pathlib import Path

import torch


def tiny_base(out: Path, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's real tokenizer: real text, fast runs.
    `dropout=0` makes training deterministic across process layouts (the DDP test)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainer.model.lora import default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
