"""`trainer archive --engine onnxruntime`: the merged classifier as one ONNX graph (model.onnx;
a routed run: one per expert), checked against PyTorch before it ships and listed in the
archive's sha256 manifest."""

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from handlers.manifest import add_to_manifest
from handlers.onnx_engine import (
    INSTALL,
    LABELS_KEY,
    OUTPUTS,
    OnnxEngine,
    expert_files,
    import_onnxruntime,
    load_router,
)
from handlers.routing import NEWEST, RoutedClassifier
from handlers.runtime import ModelRuntime, RuntimeSettings, pooled_features
from trainer.common.errors import SettingsError

OPSET = 17  # LayerNormalization is a single op from opset 17 on (ONNX Runtime fuses it)
TOLERANCE = 1e-3  # largest difference from PyTorch accepted, in probability and pooled feature
CHECK_TEXTS = ("I loved it.", "A dull, tedious, awful film that never ends.",
               "Markets closed flat on Tuesday.", "ok",
               "Café au lait, s'il vous plaît: très bien!")


class ServedOutputs(torch.nn.Module):
    """The classifier with the runtime's own ending: (softmax over labels, pooled features)."""

    def __init__(self, model: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = dict(zip(self.input_names, inputs))
        out = self.model(**batch, output_hidden_states=True)
        return (torch.softmax(out.logits.float(), dim=-1),
                pooled_features(out.hidden_states[-1].float(), batch["attention_mask"]))


def check_exportable() -> None:
    """Refuse before any work: a host without the onnx extra."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise SettingsError("--engine onnxruntime: the package onnx is not installed here "
                            f"({INSTALL})") from e
    import_onnxruntime()


def export(model: torch.nn.Module, tokenizer: Any, labels: list[str], path: Path) -> None:
    """Trace one PyTorch classifier into `path`: dynamic batch and sequence axes, the labels in
    the graph's metadata, one file (weights inside)."""
    import onnx

    sample = tokenizer(list(CHECK_TEXTS[:2]), padding=True, return_tensors="pt")
    names = list(sample.keys())
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | \
        {name: {0: "batch"} for name in OUTPUTS}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter's deprecation and tracer notes: `compare` decides instead
        warnings.simplefilter("ignore")
        torch.onnx.export(ServedOutputs(model, names).eval(),
                          tuple(sample[name] for name in names), str(path), dynamo=False,
                          input_names=names, output_names=list(OUTPUTS), dynamic_axes=axes,
                          opset_version=OPSET, external_data=False)
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {LABELS_KEY: json.dumps(labels)})
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def compare(reference: ModelRuntime, candidate: ModelRuntime, texts: list[str]
            ) -> dict[str, Any]:
    """Both runtimes on `texts` as one padded batch and one by one: the largest differences
    and the answers that changed (a top-two tie within TOLERANCE does not count)."""
    probs_diff = pooled_diff = 0.0
    changed = 0
    for batch in [texts] + [[t] for t in texts]:
        p0, f0, _ = reference.forward(batch, pooled=True)
        p1, f1, _ = candidate.forward(batch, pooled=True)
        probs_diff = max(probs_diff, float((p0 - p1).abs().max()))
        pooled_diff = max(pooled_diff, float((f0 - f1).abs().max()))
        top = p0.topk(min(2, p0.shape[1]), dim=1).values
        decided = top[:, 0] - top[:, -1] > TOLERANCE if top.shape[1] > 1 else True
        changed += int(((p0.argmax(dim=1) != p1.argmax(dim=1)) & decided).sum())
    return {"texts": len(texts), "max_abs_diff_probs": probs_diff,
            "max_abs_diff_pooled": pooled_diff, "changed_answers": changed}


def add_onnx(model_dir: Path, max_length: int) -> dict[str, Any]:
    """Export model_dir's classifier to model_dir/model.onnx (a routed run: each expert to its
    own graph), check the whole against PyTorch and list the graphs in model_dir's manifest
    (call on a staged copy of a verified run dir)."""
    model_dir = Path(model_dir)
    check_exportable()
    settings = RuntimeSettings(max_length=max_length, monitor=False)
    reference = ModelRuntime.load(model_dir, "cpu", settings)
    model = reference.model
    experts = (dict(zip(model.names, model.experts)) if isinstance(model, RoutedClassifier)
               else {NEWEST: model})
    graphs = expert_files(load_router(model_dir))
    for expert, graph in graphs.items():
        export(experts[expert], reference.tokenizer, reference.labels, model_dir / graph)
    candidate = ModelRuntime(None, reference.tokenizer, settings, reference.device,
                             engine=OnnxEngine.load(model_dir))
    if candidate.labels != reference.labels:
        raise SettingsError(f"exported graphs: labels {candidate.labels} differ from the model's "
                            f"{reference.labels}")
    texts = [*CHECK_TEXTS, "word " * (max_length + 8)]  # the last one is truncated
    pairs = [(reference, candidate)]  # the whole, through the router where there is one
    if len(graphs) > 1:  # and each graph against its own expert, whichever texts it is routed
        for expert in graphs:
            pairs.append((ModelRuntime(experts[expert], reference.tokenizer, settings,
                                       reference.device),
                          ModelRuntime(None, reference.tokenizer, settings, reference.device,
                                       engine=candidate.engine.alone(expert))))
    checks = [compare(a, b, texts) for a, b in pairs]
    check = {"texts": len(texts), "changed_answers": sum(c["changed_answers"] for c in checks),
             **{k: max(c[k] for c in checks) for k in ("max_abs_diff_probs",
                                                        "max_abs_diff_pooled")}}
    if max(check["max_abs_diff_probs"], check["max_abs_diff_pooled"]) > TOLERANCE \
            or check["changed_answers"]:
        raise SettingsError(f"--engine onnxruntime: the exported graph differs from PyTorch "
                            f"(max |dp| {check['max_abs_diff_probs']:.1e}, max |d pooled| "
                            f"{check['max_abs_diff_pooled']:.1e}, {check['changed_answers']} "
                            f"answers changed; tolerance {TOLERANCE}); archive with --engine torch")
    for graph in graphs.values():
        add_to_manifest(model_dir, graph)
    return {"opset": OPSET, "graphs": list(graphs.values()), **check}
