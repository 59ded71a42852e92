"""The ONNX Runtime engine: the archive's model.onnx answers the runtime's forward.

`trainer archive --engine onnxruntime` exports the merged classifier as one graph whose outputs
are exactly what ModelRuntime.forward computes with PyTorch (the softmax over labels and the
L2-normalised, attention-mask mean-pooled last hidden state), checks it against PyTorch on
sample texts, and lists it in the run's sha256 manifest. Here it is loaded (after the manifest
check) and run on the tokenizer's batch; the labels travel in the graph's metadata.

A routed run (router.json: each domain answered by the version that learnt it) exports one graph
per expert (model.onnx for the run's own weights, <expert>.onnx beside each expert's
safetensors); the same router picks each row's graph, and each graph runs on its own rows only,
as RoutedClassifier does with the PyTorch experts.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch

from handlers.errors import ConfigError
from handlers.routing import NEWEST, ROUTER_FILE, Router, own_width

ENGINES = ("torch", "onnxruntime")
ONNX_FILE = "model.onnx"
ONNX_SUFFIX = ".onnx"
OUTPUTS = ("probs", "pooled")  # the graph's outputs, in this order
LABELS_KEY = "driftserve.labels"  # metadata_props entry: the label names, JSON, in logit order
INSTALL = "pip install 'driftserve[onnx]'"
log = logging.getLogger(__name__)


def import_onnxruntime() -> Any:
    """The onnxruntime module, or one line saying that this archive needs it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError("engine onnxruntime: this archive runs on ONNX Runtime, but the package "
                          f"onnxruntime is not installed here ({INSTALL}, or archive the run "
                          "with --engine torch)") from e
    return onnxruntime


def onnx_name(expert: str) -> str:
    """The graph file of an expert's weights file: model.safetensors -> model.onnx."""
    return ONNX_FILE if expert == NEWEST else Path(expert).stem + ONNX_SUFFIX


def load_router(model_dir: Path) -> Router | None:
    return Router.load(model_dir) if (Path(model_dir) / ROUTER_FILE).is_file() else None


def expert_files(router: Router | None) -> dict[str, str]:
    """expert weights file -> its graph file, the run's own first; one entry when unrouted."""
    experts = router.experts.values() if router else []
    return {name: onnx_name(name) for name in dict.fromkeys([NEWEST, *experts])}


def providers(ort: Any, device: torch.device) -> list[Any]:
    """CUDA for a GPU worker where this onnxruntime build has it, else the CPU."""
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                    "CPUExecutionProvider"]
        log.warning("engine onnxruntime: this onnxruntime has no CUDA provider; serving on CPU")
    return ["CPUExecutionProvider"]


def open_session(ort: Any, path: Path, device: torch.device, threads: int
                 ) -> tuple[Any, list[str]]:
    """An InferenceSession over one exported graph, and the labels in its metadata."""
    if not path.is_file():
        raise ConfigError(f"engine onnxruntime: {path} is missing; archive the run with "
                          "`trainer archive --engine onnxruntime`")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
    options.log_severity_level = 3  # errors only: the worker log stays readable
    session = ort.InferenceSession(str(path), options, providers=providers(ort, device))
    names = [o.name for o in session.get_outputs()]
    if names != list(OUTPUTS):
        raise ConfigError(f"{path.name}: outputs {names}, expected {list(OUTPUTS)}")
    try:
        labels = json.loads(session.get_modelmeta().custom_metadata_map[LABELS_KEY])
    except (KeyError, ValueError) as e:
        raise ConfigError(f"{path}: no {LABELS_KEY} metadata; not exported by driftserve") from e
    return session, [str(label) for label in labels]


class OnnxEngine:
    """An InferenceSession per exported graph (one, or one per expert behind the run's router):
    tokenized batch -> (probs, pooled)."""

    dtype = "float32"

    def __init__(self, sessions: dict[str, Any], labels: list[str], router: Router | None = None
                 ) -> None:
        self.sessions = sessions  # expert weights file -> session; NEWEST alone when unrouted
        self.labels = labels
        self.router = router
        self.inputs = [i.name for i in sessions[NEWEST].get_inputs()]

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | str = "cpu", threads: int = 0
             ) -> "OnnxEngine":
        """The sessions over model_dir's graphs (the caller verified the manifest)."""
        ort = import_onnxruntime()
        model_dir = Path(model_dir)
        router = load_router(model_dir)
        sessions, labels = {}, {}
        for expert, graph in expert_files(router).items():
            sessions[expert], labels[expert] = open_session(ort, model_dir / graph,
                                                            torch.device(device), threads)
        if len({json.dumps(x) for x in labels.values()}) > 1:
            raise ConfigError(f"{model_dir}: the experts' graphs disagree on labels {labels}")
        return cls(sessions, labels[NEWEST], router)

    def alone(self, expert: str) -> "OnnxEngine":
        """One expert's graph answering every row (the exporter checks each graph this way)."""
        return OnnxEngine({NEWEST: self.sessions[expert]}, self.labels)

    def _run(self, session: Any, feed: dict[str, Any], pooled: bool) -> list[Any]:
        return session.run(list(OUTPUTS if pooled else OUTPUTS[:1]), feed)

    def __call__(self, batch: Any, pooled: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, pooled features or None) for the tokenizer's padded batch."""
        feed = {name: batch[name].numpy() for name in self.inputs}
        if self.router is None:
            out = self._run(self.sessions[NEWEST], feed, pooled)
            return torch.from_numpy(out[0]), torch.from_numpy(out[1]) if pooled else None
        ids, mask = batch["input_ids"], batch["attention_mask"]
        owners = [self.router.experts[d] for d in self.router.domain_of(ids, mask)]
        probs: torch.Tensor | None = None
        features: torch.Tensor | None = None
        for expert in dict.fromkeys(owners):
            rows = [i for i, o in enumerate(owners) if o == expert]
            width = own_width(mask, rows)
            out = self._run(self.sessions[expert],
                            {k: v[rows, :width] for k, v in feed.items()}, pooled)
            if probs is None:
                probs = torch.empty((len(owners), out[0].shape[1]), dtype=torch.float32)
                if pooled:
                    features = torch.empty((len(owners), out[1].shape[1]), dtype=torch.float32)
            probs[rows] = torch.from_numpy(out[0])
            if pooled:
                features[rows] = torch.from_numpy(out[1])
        return probs, features
