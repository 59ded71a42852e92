"""Reduced-precision training: bf16 autocast, weights and optimiser state kept in fp32.

Only the matmuls run in bf16 (about 2x faster training on a CPU with AVX-512 BF16), so what is
merged, saved, scored and served is still an fp32 model.
"""

import contextlib
from contextlib import AbstractContextManager

import torch

from trainer.common.errors import SettingsError

PRECISIONS = ("fp32", "bf16")


def autocast(precision: str) -> AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)
    raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
