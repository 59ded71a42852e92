"""The ONNX Runtime engine: the archive's model.onnx answers the runtime's forward.

`trainer archive --engine onnxruntime` exports the merged classifier as one graph whose outputs
are exactly what ModelRuntime.forward computes with PyTorch (the softmax over labels and the
L2-normalised, attention-mask mean-pooled last hidden state), checks it against PyTorch on
sample texts, and lists it in the run's sha256 manifest. Here it is loaded (after the manifest
check) and run on the tokenizer's batch; the labels travel in the graph's metadata.
"""

import json
import logging
from pathlib import Path
from typing import Any

import torch

from handlers.errors import ConfigError

ENGINES = ("torch", "onnxruntime")
ONNX_FILE = "model.onnx"
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


def providers(ort: Any, device: torch.device) -> list[Any]:
    """CUDA for a GPU worker where this onnxruntime build has it, else the CPU."""
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}),
                    "CPUExecutionProvider"]
        log.warning("engine onnxruntime: this onnxruntime has no CUDA provider; serving on CPU")
    return ["CPUExecutionProvider"]


class OnnxEngine:
    """One InferenceSession over the archived graph: tokenized batch -> (probs, pooled)."""

    dtype = "float32"

    def __init__(self, session: Any, labels: list[str]) -> None:
        self.session = session
        self.labels = labels
        self.inputs = [i.name for i in session.get_inputs()]
        names = [o.name for o in session.get_outputs()]
        if names != list(OUTPUTS):
            raise ConfigError(f"{ONNX_FILE}: outputs {names}, expected {list(OUTPUTS)}")

    @classmethod
    def load(cls, model_dir: Path, device: torch.device | str = "cpu", threads: int = 0
             ) -> "OnnxEngine":
        """The session over model_dir/model.onnx (the caller verified the manifest)."""
        ort = import_onnxruntime()
        path = Path(model_dir) / ONNX_FILE
        if not path.is_file():
            raise ConfigError(f"engine onnxruntime: {path} is missing; archive the run with "
                              "`trainer archive --engine onnxruntime`")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default
        options.log_severity_level = 3  # errors only: the worker log stays readable
        session = ort.InferenceSession(str(path), options,
                                       providers=providers(ort, torch.device(device)))
        meta = session.get_modelmeta().custom_metadata_map
        try:
            labels = json.loads(meta[LABELS_KEY])
        except (KeyError, ValueError) as e:
            raise ConfigError(f"{path}: no {LABELS_KEY} metadata; not exported by driftserve") \
                from e
        return cls(session, [str(label) for label in labels])

    def __call__(self, batch: Any, pooled: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, pooled features or None) for the tokenizer's padded batch."""
        feed = {name: batch[name].numpy() for name in self.inputs}
        out = self.session.run(list(OUTPUTS if pooled else OUTPUTS[:1]), feed)
        return torch.from_numpy(out[0]), torch.from_numpy(out[1]) if pooled else None
