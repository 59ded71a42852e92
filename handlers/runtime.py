"""The model runtime: verify, load, decode requests, batch-predict. Plain Python, no `ts` import."""

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from handlers.drift import DriftSettings
from handlers.errors import BadRequest, ConfigError, PayloadTooLarge, UnsupportedMediaType
from handlers.features import REFERENCE_FILE, Reference
from handlers.manifest import verify_manifest
from handlers.monitor import TrafficMonitor
from handlers.onnx_engine import ENGINES, OnnxEngine
from handlers.routing import RoutedClassifier, Router, with_experts
from handlers.signing import trusted_keys_from_env

ADAPTER_CONFIG = "adapter_config.json"  # a PEFT adapter archive: these files + the base model in base/
log = logging.getLogger(__name__)
ONNX_MICRO_BATCH = 4  # rows per ONNX Runtime call, sorted by length (see micro_batch)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _setting(default: Any, help: str) -> Any:
    """A settings field with its help text: `trainer archive` shows it on the field's flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class HandlerSettings:
    """What an archive carries in model-config.yaml's `handler:` section (`trainer archive` has a
    flag for each field). One declaration for the handler and the archiver: handlers cannot
    import trainer, so trainer's ArchiveSettings inherits these fields."""

    max_chars: int = _setting(2000, "longest accepted request text, in characters (longer "
                                    "requests get 413)")
    max_length: int = _setting(128, "tokens kept per text")
    engine: str = _setting("torch", "torch (PyTorch eager, the reference) | onnxruntime (the "
                                    "merged model exported to ONNX at archive time, one graph "
                                    "per expert, and run by ONNX Runtime; float32; needs the "
                                    "onnx extra where it is archived and served)")
    micro_batch: int = _setting(0, "rows per forward call: a batch is sorted by length and run "
                                   "in groups of this many, so short texts are not padded to the "
                                   "longest (0 = the engine's default: 4 for onnxruntime on a "
                                   "CPU, else the whole batch)")
    dtype: str = _setting("float32", "float32 | float16 (GPU only) | bfloat16 (GPU, and bf16 "
                                     "autocast on CPUs with native bf16)")
    threads: int = _setting(0, "torch (or ONNX Runtime) threads per worker (0 = the engine's "
                               "default)")
    merge: bool = _setting(True, "merge an archived PEFT adapter at load (false: serve it "
                                 "unmerged)")
    monitor: bool = _setting(True, "keep drift statistics of the served traffic (needs the run's "
                                   "drift reference)")
    window: int = _setting(2000, "requests per worker kept for statistics (memory stays bounded)")
    drift_ert: int = _setting(10_000, "in-domain requests expected before a false drift alarm, "
                                      "at least (sets the tests' threshold)")
    drift_check_every: int = _setting(25, "requests per worker between drift checks")
    drift_min_effect: float = _setting(0.05, "KS distance floor for an alarm")
    drift_min_window: int = _setting(50, "shortest window scanned: no alarm before this many "
                                         "requests")
    drift_correction: str = _setting("bh", "bh (Benjamini-Hochberg) | bonferroni")
    capture: int = _setting(0, "keep the texts of the newest N requests per worker for "
                               "`trainer sample` (0 = off; texts stay on the server host, see "
                               "README: privacy)")


@dataclass
class RuntimeSettings(HandlerSettings):
    """The handler's settings: the archived `handler:` section plus what belongs to the serving
    host, never archived (a `handler:` section may still set them)."""

    stats_dir: str = _setting("", "directory the workers share their windows in; empty = "
                                  "$DRIFTSERVE_STATS_DIR or $TMPDIR/driftserve")
    persist_every_s: float = _setting(1.0, "seconds between a worker's writes of its window for "
                                           "the others")

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
        for name in ("threads", "micro_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        if self.dtype not in DTYPES:
            problems.append(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.engine not in ENGINES:
            problems.append(f"engine must be one of {list(ENGINES)}, got {self.engine!r}")
        elif self.engine == "onnxruntime":
            problems += [f"engine onnxruntime runs the merged float32 graph; {name} must be "
                         f"{want}, got {getattr(self, name)!r}"
                         for name, want in (("dtype", "float32"), ("merge", True))
                         if getattr(self, name) != want]
        problems += [f"{name} must be true or false, got {getattr(self, name)!r}"
                     for name in ("merge", "monitor") if not isinstance(getattr(self, name), bool)]
        if not isinstance(self.window, int) or self.window < 1:
            problems.append(f"window must be a positive integer, got {self.window!r}")
        if not isinstance(self.capture, int) or not 0 <= self.capture <= self.window:
            problems.append(f"capture must be an integer in [0, window={self.window}], "
                            f"got {self.capture!r}")
        if not isinstance(self.persist_every_s, (int, float)) or self.persist_every_s <= 0:
            problems.append(f"persist_every_s must be > 0, got {self.persist_every_s!r}")
        try:
            self.drift_settings()
        except ConfigError as e:
            problems.append(str(e))
        if problems:
            raise ConfigError("handler settings: " + "; ".join(problems))

    def drift_settings(self) -> DriftSettings:
        return DriftSettings(self.drift_ert, self.drift_check_every, self.drift_min_effect,
                             self.drift_min_window, self.drift_correction).validate()

    def stats_root(self) -> Path:
        return Path(self.stats_dir or os.environ.get("DRIFTSERVE_STATS_DIR")
                    or Path(tempfile.gettempdir()) / "driftserve")


def cpu_has_bf16() -> bool:
    """oneDNN's own check (AVX-512 BF16 or AMX): bf16 matmuls run natively, not emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def compute_dtype(settings_dtype: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """(weight dtype, bf16 autocast on CPU). On GPU the weights take the archive's dtype. On CPU
    weights load in float32; `bfloat16` turns on bf16 autocast where the CPU has native bf16 (its
    accuracy within 0.3 points, ~2.3x at batch 8: bench/results/precision-cpu.md), else float32
    with one log line."""
    if device.type == "cuda":
        return DTYPES[settings_dtype], False
    if settings_dtype == "bfloat16" and cpu_has_bf16():
        return torch.float32, True
    if settings_dtype != "float32":
        why = ("this CPU has no native bf16" if settings_dtype == "bfloat16"
               else "on CPU only bfloat16 is used")
        log.warning("dtype %s: %s; serving in float32", settings_dtype, why)
    return torch.float32, False


def store_linear_weights_bf16(model: torch.nn.Module) -> None:
    """Autocast rounds every Linear weight to bf16 on every forward (it caches casts only for
    weights that require grad). Rounding them once gives the same answers, bit for bit, and
    1.3x at batch 1 (bench/results/precision-cpu.md); embeddings and LayerNorms stay float32."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)


def pooled_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The L2-normalised mean of the last hidden state over each text's own tokens: the drift
    features' embedding (one definition for every engine; the ONNX export computes it too)."""
    summed = (hidden * attention_mask.unsqueeze(-1)).sum(dim=1) \
        / attention_mask.sum(dim=1, keepdim=True)
    return torch.nn.functional.normalize(summed, dim=-1)


def select_device(gpu_id: int | str | None) -> torch.device:
    """TorchServe hands each worker a gpu_id when the model asks for GPUs; use it if CUDA is up."""
    if gpu_id is not None and str(gpu_id) != "" and int(gpu_id) >= 0 and torch.cuda.is_available():
        return torch.device(f"cuda:{int(gpu_id)}")
    return torch.device("cpu")


def load_adapter(model_dir: Path, dtype: torch.dtype, merge: bool) -> Any:
    """Base model from base/ plus the PEFT adapter beside it. Merged, it costs what the base model
    costs per request; unmerged, every LoRA layer adds two small matmuls (kept for comparison)."""
    from peft import PeftModel

    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir / "base", local_files_only=True, use_safetensors=True, dtype=dtype)
    model = PeftModel.from_pretrained(base, model_dir, is_trainable=False)
    return model.merge_and_unload(safe_merge=True) if merge else model


def load_torch_model(model_dir: Path, settings: RuntimeSettings, device: torch.device
                     ) -> tuple[torch.nn.Module, bool]:
    """(the classifier as PyTorch serves it, bf16 autocast on CPU): merged or not, behind its
    run's router when it has one."""
    dtype, cpu_autocast = compute_dtype(settings.dtype, device)
    if (model_dir / ADAPTER_CONFIG).is_file():
        model = load_adapter(model_dir, dtype, settings.merge)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, local_files_only=True, use_safetensors=True, dtype=dtype
        )
    model = with_experts(model_dir, model.to(device).eval())
    if cpu_autocast:
        store_linear_weights_bf16(model)
    return model, cpu_autocast


def check_media_type(content_type: str | None) -> None:
    """Text and JSON are what a classifier of text can read; raw bytes (octet-stream) are taken
    as UTF-8 text. Anything else (XML, an image) is refused, not guessed at."""
    base = (content_type or "").split(";")[0].strip().lower()
    if not base or base.startswith("text/") or base.endswith(("/json", "+json")) \
            or base == "application/octet-stream":
        return
    raise UnsupportedMediaType(f"Content-Type {base} is not supported; send text/plain, or "
                               "application/json with {\"text\": \"...\"}")


def decode_request(body: Any, content_type: str | None, max_chars: int) -> str:
    """One request body -> its text. Raise a 4xx error that names the problem."""
    check_media_type(content_type)
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
            except ValueError as e:  # JSONDecodeError, or an int over Python's digit limit
                if claims_json:
                    detail = (f"{e.msg} (line {e.lineno}, column {e.colno})"
                              if isinstance(e, json.JSONDecodeError) else str(e))
                    raise BadRequest(
                        f"body sent as {content_type} is not valid JSON: {detail}"
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
    try:  # a JSON escape such as "\ud800" decodes to a lone surrogate the tokenizer rejects
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(f"text holds a lone surrogate {text[e.start]!r} at character {e.start}; "
                         "send valid Unicode") from e
    if not any(ch.isprintable() and not ch.isspace() for ch in text):
        raise BadRequest("field 'text' holds only control characters (e.g. NUL); send words")
    return text


class ModelRuntime:
    """A verified, LoRA-merged sequence classifier ready for batched inference."""

    def __init__(self, model, tokenizer, settings: RuntimeSettings, device: torch.device,
                 name: str = "model", version: str = "1", engine: OnnxEngine | None = None
                 ) -> None:
        self.model = model  # None where `engine` answers instead of PyTorch
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.device = device
        self.name = name
        self.version = version
        self.labels = engine.labels if engine else [model.config.id2label[i]
                                                    for i in range(model.config.num_labels)]
        self.monitor: TrafficMonitor | None = None
        self.cpu_autocast = False  # bf16 autocast on a CPU with native bf16 (compute_dtype)

    def start_monitor(self, reference: Reference, worker_id: str) -> TrafficMonitor:
        directory = self.settings.stats_root() / self.name / f"v{self.version}"
        self.monitor = TrafficMonitor(reference, directory, self.settings.window,
                                      self.settings.persist_every_s,
                                      self.settings.drift_settings(), worker_id,
                                      self.settings.capture, trusted_keys_from_env())
        return self.monitor

    @classmethod
    def load(cls, model_dir: str | os.PathLike, device: torch.device | str = "cpu",
             settings: RuntimeSettings | None = None, name: str = "model",
             version: str = "1", worker_id: str | None = None) -> "ModelRuntime":
        """Verify the sha256 manifest first: nothing is read from a tampered directory."""
        settings = settings or RuntimeSettings()
        model_dir = Path(model_dir)
        verify_manifest(model_dir)
        device = torch.device(device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if settings.engine == "onnxruntime":  # the archive's graph; no PyTorch weights loaded
            runtime = cls(None, tokenizer, settings, device, name, version,
                          OnnxEngine.load(model_dir, device, settings.threads))
        else:
            model, cpu_autocast = load_torch_model(model_dir, settings, device)
            runtime = cls(model, tokenizer, settings, device, name, version)
            runtime.cpu_autocast = cpu_autocast
        if settings.monitor and (model_dir / REFERENCE_FILE).is_file():
            runtime.start_monitor(Reference.load(model_dir / REFERENCE_FILE),
                                  worker_id or str(os.getpid()))
        return runtime

    def micro_batch(self) -> int:
        """Rows per forward call (0: the whole batch). ONNX Runtime's CPU forward costs about
        the same per row at batch 1 as at batch 8, so padding short rows to the longest is pure
        loss there: groups of 4 similar lengths ran 1.2x a padded batch of 8 in process. A GPU
        wants whole batches, and so does PyTorch eager on a CPU."""
        if self.settings.micro_batch:
            return self.settings.micro_batch
        return ONNX_MICRO_BATCH if self.engine is not None and self.device.type == "cpu" else 0

    @torch.inference_mode()
    def forward(self, texts: list[str], pooled: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Softmax over labels, each group of rows padded only to its longest text; optionally
        the L2-normalised mean-pooled last hidden state; token counts. In input order."""
        size = self.micro_batch()
        if not size or len(texts) <= size:
            return self._forward(self.tokenizer(
                texts, padding=True, truncation=True, max_length=self.settings.max_length,
                return_tensors="pt"), pooled)
        encoded = self.tokenizer(texts, truncation=True, max_length=self.settings.max_length)
        order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
        parts = [self._forward(self.tokenizer.pad(
            {k: [v[i] for i in order[start:start + size]] for k, v in encoded.items()},
            return_tensors="pt"), pooled) for start in range(0, len(order), size)]
        back = torch.argsort(torch.tensor(order))  # sorted position of each input row
        probs = torch.cat([p for p, _, _ in parts])[back]
        features = torch.cat([f for _, f, _ in parts])[back] if pooled else None
        return probs, features, torch.cat([t for _, _, t in parts])[back]

    def _forward(self, batch: Any, pooled: bool
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.engine is not None:  # its graph ends in the same softmax and pooled features
            probs, features = self.engine(batch, pooled)
            return probs, features, batch["attention_mask"].sum(dim=1)
        batch = batch.to(self.device)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_autocast):
            out = self.model(**batch, output_hidden_states=pooled)
        probs = torch.softmax(out.logits.float(), dim=-1).cpu()
        mask = batch["attention_mask"]
        tokens = mask.sum(dim=1).cpu()
        if not pooled:
            return probs, None, tokens
        return probs, pooled_features(out.hidden_states[-1].float(), mask).cpu(), tokens

    def probabilities(self, texts: list[str]) -> torch.Tensor:
        return self.forward(texts)[0]

    def predict(self, texts: list[str], monitored: list[bool] | None = None
                ) -> list[dict[str, Any]]:
        """`monitored[i]` False keeps text i out of the drift statistics (evaluation traffic
        such as rollout holdouts must not look like production traffic)."""
        if not texts:
            return []
        keep = [True] * len(texts) if monitored is None else monitored
        watch = self.monitor is not None and any(keep)
        probs, pooled, tokens = self.forward(texts, pooled=watch)
        if watch:
            rows = [i for i, k in enumerate(keep) if k]
            self.monitor.observe(pooled[rows].numpy(), probs[rows].numpy(), tokens[rows].numpy(),
                                 [texts[i] for i in rows])
        return [self._response(row) for row in probs.tolist()]

    def _response(self, probs: list[float]) -> dict[str, Any]:
        best = max(range(len(probs)), key=probs.__getitem__)
        return {
            "label": self.labels[best],
            "probabilities": {label: round(p, 6) for label, p in zip(self.labels, probs)},
            "model": self.name,
            "version": self.version,
        }

    def router(self) -> Router | None:
        """The router behind this runtime's answers, whichever engine runs the experts."""
        if self.engine is not None:
            return self.engine.router
        return self.model.router if isinstance(self.model, RoutedClassifier) else None

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "labels": self.labels,
            "device": str(self.device),
            "engine": "onnxruntime" if self.engine else "torch",
            "dtype": self.engine.dtype if self.engine else
            str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "compute": "bfloat16 autocast" if self.cpu_autocast else None,
            "settings": asdict(self.settings),
            "stats": self.monitor.describe() if self.monitor else None,
            "experts": self.router().experts if self.router() else None,  # domain -> version
        }
