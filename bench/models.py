"""Models the benchmarks and tests build for themselves (no weights are committed)."""

from pathlib import Path
from typing import Any

import torch


def tiny_base(out: Path, dropout: float = 0.1) -> Path:
    """A 2-layer, 32-wide random BERT with MiniLM's real tokenizer: real text, fast runs.
    `dropout=0` makes training deterministic across process layouts (the DDP test)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from trainer.lora import default_base_model

    tokenizer = AutoTokenizer.from_pretrained(default_base_model(), local_files_only=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=256,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_lora(model: Any, r: int = 16, seed: int = 0) -> Any:
    """`model` wrapped in a rank-r LoRA on query/value whose B is drawn at random (non-zero, or
    merging would be a no-op): serving cost does not depend on trained values."""
    from trainer.lora import apply_lora

    torch.manual_seed(seed)
    peft = apply_lora(model, r=r, alpha=2 * r, dropout=0.0, target_modules=["query", "value"])
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.02)
    return peft.eval()


def nyt_v1() -> Path:
    """MiniLM trained with `trainer train`'s defaults on all of nyt's train split: the continual
    bench's seed-0 v1 when it is on disk and intact, else trained once here (runs/ is ignored)."""
    from handlers.errors import IntegrityError
    from handlers.manifest import verify_manifest
    from trainer.train import TrainSettings, run_train

    root = Path(__file__).resolve().parents[1]
    cached = root / "bench/results/tmp/continual-c8448e44237c/seed0/v1-herding"
    try:
        verify_manifest(cached)
        return cached
    except IntegrityError:
        out = root / "runs" / "bench" / "nyt-v1"
        run_train(TrainSettings(), "nyt", out, reuse=True)
        return out
