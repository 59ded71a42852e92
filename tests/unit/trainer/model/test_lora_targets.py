"""LoRA targets for any base model: PEFT's per-architecture default, and errors that name real layers."""

import copy

import pytest
import torch
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    PretrainedConfig,
    RobertaConfig,
)

from trainer.model.lora import apply_lora, linear_layer_names, merge, resolve_target_modules

VOCAB, LAYERS, NUM_LABELS = 100, 2, 3
# initializer_range 0.2 (not 0.02): logits big enough that an adapter's effect is far above merge error
SIZES = {"vocab_size": VOCAB, "max_position_embeddings": 64, "num_labels": NUM_LABELS,
         "initializer_range": 0.2}
CONFIGS: dict[str, PretrainedConfig] = {
    "bert": BertConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                       intermediate_size=37, **SIZES),
    "roberta": RobertaConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                             intermediate_size=37, pad_token_id=1, **SIZES),
    "deberta-v2": DebertaV2Config(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
                                  intermediate_size=37, **SIZES),
    "distilbert": DistilBertConfig(dim=32, n_layers=LAYERS, n_heads=2, hidden_dim=37, **SIZES),
}
DISTILBERT_LINEARS = ["classifier", "k_lin", "lin1", "lin2", "out_lin", "pre_classifier", "q_lin", "v_lin"]


def tiny(model_type: str) -> torch.nn.Module:
    """A random 2-layer, 32-wide sequence classifier of that architecture, built offline."""
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(copy.deepcopy(CONFIGS[model_type]))


def batch(n: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(3, VOCAB, (n, length), generator=g),
            "attention_mask": torch.ones(n, length, dtype=torch.long),
            "labels": torch.randint(0, NUM_LABELS, (n,), generator=g)}


def lora_grads(peft_model: torch.nn.Module, targets: list[str]) -> dict[str, float]:
    """Gradient norm of every lora_A / lora_B weight, keyed by parameter name."""
    grads = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            assert any(f".{t}.lora_" in name for t in targets), name  # LoRA only where asked
            grads[name] = 0.0 if p.grad is None else p.grad.abs().sum().item()
    return grads


# (model type, --target-modules): DistilBERT is absent from PEFT 0.21's mapping; its default
# comes from the attention block's q/v projections
CASES = [("bert", []), ("roberta", []), ("deberta-v2", []), ("distilbert", []),
         ("distilbert", ["q_lin", "v_lin"]), ("bert", ["query", "value"])]
DEFAULTS = {**PEFT_TARGETS, "distilbert": ["q_lin", "v_lin"]}


@pytest.mark.parametrize(("model_type", "requested"), CASES,
                         ids=[f"{t}-{','.join(r) or 'default'}" for t, r in CASES])
def test_lora_lands_on_attention_projections_and_trains(model_type, requested, capsys):
    model = tiny(model_type)
    assert model.config.model_type == model_type
    expected = requested or list(DEFAULTS[model_type])
    assert resolve_target_modules(model, requested) == expected

    peft_model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=requested)
    assert set(peft_model.peft_config["default"].target_modules) == set(expected)
    targeted = peft_model.base_model.targeted_module_names
    assert len(targeted) == len(expected) * LAYERS
    assert capsys.readouterr().err.strip() == (
        f"LoRA on {', '.join(expected)} ({model_type}: {len(expected) * LAYERS} modules)")

    # Step 1: B starts at zero, so only B gets a gradient; after one optimizer step A gets one too.
    peft_model.train()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    peft_model(**batch()).loss.backward()
    grads = lora_grads(peft_model, expected)
    assert len(grads) == 2 * len(targeted)
    assert all(v > 0 for k, v in grads.items() if "lora_B" in k), grads
    optimizer.step()
    optimizer.zero_grad()
    peft_model(**batch()).loss.backward()
    assert all(v > 0 for v in lora_grads(peft_model, expected).values())


def test_model_type_without_a_peft_default_names_its_linear_layers():
    """DistilBERT is not in PEFT's map: its q/v attention projections are found by name; a
    model whose attention layers have no such names gets an error listing what it has."""
    model = tiny("distilbert")
    assert "distilbert" not in PEFT_TARGETS
    assert linear_layer_names(model) == DISTILBERT_LINEARS
    assert resolve_target_modules(model, []) == ["q_lin", "v_lin"]
    for name, module in list(model.named_modules()):
        if name.endswith(".attention"):
            module.add_module("q_extra", torch.nn.Linear(32, 32))
            module.add_module("v_extra", torch.nn.Linear(32, 32))  # ambiguous q and v names
    with pytest.raises(ValueError, match="--target-modules") as e:
        apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules=[])
    assert "'distilbert'" in str(e.value) and "q_lin" in str(e.value)


def test_bert_names_on_distilbert_name_the_model_type_and_its_layers():
    with pytest.raises(ValueError) as e:
        apply_lora(tiny("distilbert"), r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    message = str(e.value)
    assert message.startswith("--target-modules query,value match no module of this distilbert model")
    assert "q_lin" in message and message.endswith(", ".join(DISTILBERT_LINEARS))
    assert "No modules were targeted" not in message


def test_partial_match_names_only_the_missing_modules():
    with pytest.raises(ValueError) as e:
        resolve_target_modules(tiny("distilbert"), ["q_lin", "value", "v_lin"])
    assert str(e.value).startswith("--target-modules value match no module of this distilbert model;")


@pytest.mark.parametrize(("model_type", "requested"),
                         [("deberta-v2", []), ("distilbert", ["q_lin", "v_lin"])],
                         ids=["deberta-v2", "distilbert"])
def test_merged_outputs_equal_unmerged_peft_outputs(model_type, requested):
    peft_model = apply_lora(tiny(model_type), r=4, alpha=8, dropout=0.1, target_modules=requested)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init, which would hide bugs
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.inference_mode():
        unmerged = peft_model(**inputs).logits
        with peft_model.disable_adapter():
            without_adapter = peft_model(**inputs).logits
    merged_model = merge(copy.deepcopy(peft_model))
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    with torch.inference_mode():
        merged = merged_model(**inputs).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert (unmerged - without_adapter).abs().max().item() > 1e-3  # the adapter matters
