"""The model runtime: verify, load, decode requests, batch-predict. Plain Python, no `ts` import."""

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.errors import BadRequest, ConfigError, PayloadTooLarge
from handlers.manifest import verify_manifest

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RuntimeSettings:
    """The `handler:` section of model-config.yaml."""

    max_chars: int = 2000  # longest accepted text, in characters; longer requests get 413
    max_length: int = 128  # tokens kept per text after truncation
    dtype: str = "float32"  # weights on GPU: float32 | float16 | bfloat16 (CPU always float32)
    threads: int = 0  # torch intra-op threads per worker; 0 keeps torch's default

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "RuntimeSettings":
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"handler settings: unknown key(s) {unknown}; known: {sorted(known)}")
        settings = cls(**raw)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        for name in ("max_chars", "max_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            problems.append(f"threads must be an integer >= 0, got {self.threads!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if problems:
            raise ConfigError("handler settings: " + "; ".join(problems))


def select_device(gpu_id: int | str | None) -> torch.device:
    """TorchServe hands each worker a gpu_id when the model asks for GPUs; use it if CUDA is up."""
    if gpu_id is not None and str(gpu_id) != "" and int(gpu_id) >= 0 and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def decode_request(body: Any, content_type: str | None, max_chars: int) -> str:
    """One request body -> its text. Raise a 4xx error that names the problem."""
    if body is None:
        raise BadRequest("empty request body; send plain text or JSON {\"text\": \"...\"}")
    claims_json = bool(content_type) and "json" in content_type.lower()
    if isinstance(body, (bytes, bytearray)):
        if len(body) == 0:
            raise BadRequest("empty request body; send plain text or JSON {\"text\": \"...\"}")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"request body is not valid UTF-8 (byte {e.start})") from e
        if claims_json or text.lstrip().startswith("{"):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as e:
                if claims_json:
                    raise BadRequest(
                        f"body sent as {content_type} is not valid JSON: {e.msg} "
                        f"(line {e.lineno}, column {e.colno})"
                    ) from e
                body = text  # plain text that happens to start with "{"
            except RecursionError as e:
                raise BadRequest("JSON body is nested too deeply") from e
        else:
            body = text
    if isinstance(body, dict):
        if "text" not in body:
            raise BadRequest(f"JSON body must have field 'text'; got fields {sorted(body)[:10]}")
        body = body["text"]
        if not isinstance(body, str):
            raise BadRequest(f"field 'text' must be a string, got {type(body).__name__}")
    elif not isinstance(body, str):
        raise BadRequest(f"body must be text or a JSON object, got JSON {type(body).__name__}")
    text = body.strip()
    if not text:
        raise BadRequest("field 'text' is empty")
    if len(text) > max_chars:
        raise PayloadTooLarge(f"text has {len(text)} characters; the limit is {max_chars}")
    return text


class ModelRuntime:
    """A verified, LoRA-merged sequence classifier ready for batched inference."""

    def __init__(self, model, tokenizer, settings: RuntimeSettings, device: torch.device,
                 name: str = "model", version: str = "1") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.name = name
        self.version = version
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: torch.device | str = "cpu",
             settings: RuntimeSettings | None = None, name: str = "model",
             version: str = "1") -> "ModelRuntime":
        """Verify the sha256 manifest first: nothing is read from a tampered directory."""
        settings = settings or RuntimeSettings()
        model_dir = Path(model_dir)
        verify_manifest(model_dir)
        device = torch.device(device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        dtype = DTYPES[settings.dtype] if device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True, dtype=dtype
        )
        model.to(device).eval()
        return cls(model, tokenizer, settings, device, name, version)

    @torch.inference_mode()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """Softmax over labels for a batch, padded only to its longest text."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.settings.max_length,
            return_tensors="pt",
        ).to(self.device)
        logits = self.model(**batch).logits
        return torch.softmax(logits.float(), dim=-1).cpu()

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        if not texts:
            return []
        probs = self.probabilities(texts)
        return [self._response(row) for row in probs.tolist()]

    def _response(self, probs: list[float]) -> dict[str, Any]:
        best = max(range(len(probs)), key=probs.__getitem__)
        return {
            "label": self.labels[best],
            "probabilities": {label: round(p, 6) for label, p in zip(self.labels, probs)},
            "model": self.name,
            "version": self.version,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "labels": self.labels,
            "device": str(self.device),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "settings": asdict(self.settings),
        }
