"""The settings `train` and `adapt` share, declared once: `FitSettings`, which `TrainSettings`
and `AdaptSettings` inherit (with its validation rules), so a default or a help text cannot drift
apart between the two verbs.

A module of its own rather than trainer/learning/fit.py: these fields reach beyond the training loop
(labelling the data, LoRA, the quality gate, the drift reference), and `fit()` takes plain values,
so the loop stays free of CLI settings. A field whose default or meaning differs between the verbs
(min_steps, max_train, max_eval, seed, memory, selection) is declared in each subclass instead.
Construct these dataclasses with keywords only: inheritance puts these fields first.
"""

from dataclasses import dataclass

from trainer.common.config import setting
from trainer.learning.precision import PRECISIONS


@dataclass
class FitSettings:
    label_threshold: float = setting(0.5, "VADER rating band (-t, t) labelled neutral")
    epochs: int = setting(2, "passes over the training set, at least")
    max_epochs: int = setting(30, "passes at most, however small the data")
    patience: int = setting(4, "stop after this many passes without a better validation "
                               "macro-F1 (0 = never); the best pass is kept")
    batch_size: int = setting(16, "examples per optimiser step")
    lr: float = setting(1e-3, "AdamW learning rate: linear warm-up, then linear decay to 0")
    lr_warmup: float = setting(0.1, "share of the steps spent warming the learning rate up")
    balance: bool = setting(True, "effective-number class weights (Cui et al. 2019) in the loss, "
                                  "counted over the whole training set")
    beta: float = setting(0.999, "effective-number beta in [0, 1); 0 = unweighted")
    max_length: int = setting(128, "tokens kept per text")
    precision: str = setting("fp32", "fp32 | bf16: bf16 autocasts training's forward passes "
                                     "(about 2x faster on a CPU with AVX-512 BF16); the saved "
                                     "model stays fp32")
    weak_margin: float = setting(0.1, "test macro-F1 must beat chance (answers shuffled against "
                                      "the labels) and always answering the majority class by "
                                      "this much, or the run is marked weak")
    lora_r: int = setting(8, "LoRA rank")
    lora_alpha: int = setting(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = setting(0.1, "dropout on the LoRA input")
    target_modules: list[str] = setting([], "modules that get LoRA, comma-separated (empty: the "
                                            "architecture's attention projections, PEFT's map)")
    drift_components: int = setting(8, "principal components of the embedding kept for drift")
    reference_per_domain: int = setting(500, "held-out texts per domain in the drift reference")

    def fit_problems(self) -> list[str]:
        """What is wrong with the shared fields; each subclass's `validate()` adds its own."""
        problems = [f"{n} must be >= 1, got {getattr(self, n)}"
                    for n in ("epochs", "max_epochs", "batch_size", "max_length", "lora_r",
                              "lora_alpha", "drift_components", "reference_per_domain")
                    if getattr(self, n) < 1]
        if self.patience < 0:
            problems.append(f"patience must be >= 0, got {self.patience}")
        if self.max_epochs < self.epochs:
            problems.append(f"max_epochs ({self.max_epochs}) must be >= epochs ({self.epochs})")
        for name in ("lr_warmup", "weak_margin", "beta", "lora_dropout"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            problems.append(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.label_threshold <= 4:
            problems.append(f"label_threshold must be in [0, 4], got {self.label_threshold}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, "
                            f"got {self.precision!r}")
        return problems
