"""Models the benchmarks build for themselves (no weights are committed); the tests' tiny
random BERT is tests/models.py."""

from pathlib import Path
from typing import Any

import torch


def random_lora(model: Any, r: int = 16, seed: int = 0) -> Any:
    """`model` wrapped in a rank-r LoRA on query/value whose B is drawn at random (non-zero, or
    merging would be a no-op): serving cost does not depend on trained values."""
    from trainer.model.lora import apply_lora

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
    from trainer.learning.train import TrainSettings, run_train

    root = Path(__file__).resolve().parents[1]
    cached = root / "bench/results/tmp/continual-6c618beb1f11/seed0/v1-herding"
    try:
        verify_manifest(cached)
        return cached
    except IntegrityError:
        out = root / "runs" / "bench" / "nyt-v1"
        run_train(TrainSettings(), "nyt", out, reuse=True)
        return out
