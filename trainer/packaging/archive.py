"""`trainer archive`: run dir -> model_store/NAME.vN.mar through torch-model-archiver, atomically."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

import handlers
from handlers.errors import ConfigError, IntegrityError
from handlers.manifest import MANIFEST_NAME, read_manifest, verify_manifest
from handlers.onnx_engine import ONNX_SUFFIX
from handlers.runtime import HandlerSettings, RuntimeSettings
from handlers.signing import SIGNATURE_NAME, key_id, load_private_key, sign_mar
from trainer.common import config
from trainer.common.config import check, setting
from trainer.common.errors import SettingsError
from trainer.model.quality import refuse_weak
from trainer.model.rundir import REPORT_FILE, read_report
from trainer.packaging import onnx_export

HANDLER_FILE = "torchserve_handler.py"
HANDLER_KEYS = tuple(f.name for f in fields(HandlerSettings))  # model-config.yaml `handler:`
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


@dataclass
class ArchiveSettings(HandlerSettings):
    """TorchServe's per-model settings (model-config.yaml) plus the handler's own section, whose
    fields (and their defaults and help) come from handlers.runtime.HandlerSettings."""

    batch_size: int = setting(8, "most requests TorchServe batches into one handler call")
    max_batch_delay: int = setting(2, "ms TorchServe waits to fill a batch (bench/serve.py --sweep)")
    min_workers: int = setting(1, "worker processes kept alive")
    max_workers: int = setting(1, "worker processes at most")
    response_timeout: int = setting(120, "seconds before TorchServe restarts a stuck worker")
    device_type: str = setting("gpu", "gpu: use a GPU when TorchServe has one, else CPU; cpu: never")
    device_ids: str = setting("", "GPUs for this model's workers, e.g. 0,1 (empty: every GPU "
                                  "TorchServe has; workers are spread over them round-robin)")

    def validate(self) -> None:
        problems = [f"{n} must be >= 1, got {getattr(self, n)}"
                    for n in ("batch_size", "min_workers", "max_workers", "response_timeout")
                    if getattr(self, n) < 1]
        if self.max_batch_delay < 0:
            problems.append(f"max_batch_delay must be >= 0, got {self.max_batch_delay}")
        if self.max_workers < self.min_workers:
            problems.append("max_workers must be >= min_workers")
        if self.device_type not in ("gpu", "cpu"):
            problems.append(f"device_type must be gpu or cpu, got {self.device_type!r}")
        if self.device_ids and not all(x.strip().isdigit() for x in self.device_ids.split(",")):
            problems.append(f"device_ids must be GPU numbers such as 0,1, got {self.device_ids!r}")
        try:  # the handler section is checked by the handler's own rules
            RuntimeSettings.from_dict(self.handler_config())
        except ConfigError as e:
            problems.append(e.message.removeprefix("handler settings: "))
        check(problems, "archive settings")

    def handler_config(self) -> dict:
        return {name: getattr(self, name) for name in HANDLER_KEYS}

    def model_config(self) -> dict:
        devices = {"deviceIds": [int(x) for x in self.device_ids.split(",")]} \
            if self.device_ids else {}
        return {
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "responseTimeout": self.response_timeout,
            "deviceType": self.device_type,
            **devices,
            "handler": self.handler_config(),
        }


def mar_path(model_store: Path, name: str, version: str) -> Path:
    return Path(model_store) / f"{name}.v{version}.mar"


def mar_is_current(mar: Path, run_dir: Path, settings: ArchiveSettings,
                   signer: str | None = None) -> bool:
    """The archive holds exactly this run dir's manifest and these settings, and is signed by
    `signer` (a key id; None: unsigned)."""
    try:
        with zipfile.ZipFile(mar) as z:
            archived = json.loads(z.read(MANIFEST_NAME))
            if settings.engine == "onnxruntime":  # the graphs the archiver adds
                archived = {k: v for k, v in archived.items() if not k.endswith(ONNX_SUFFIX)}
            same_run = archived == read_manifest(run_dir)
            same_cfg = yaml.safe_load(z.read("model-config.yaml")) == settings.model_config()
            same_signer = _signer(z) == signer
        return same_run and same_cfg and same_signer
    except (OSError, KeyError, zipfile.BadZipFile, yaml.YAMLError, ValueError, AttributeError,
            IntegrityError):
        return False


def build_archive(run_dir: Path, name: str, version: str, model_store: Path,
                  settings: ArchiveSettings, reuse: bool = False, allow_weak: bool = False,
                  sign_key: Path | None = None) -> Path:
    """Stage run files (+ model.onnx for --engine onnxruntime) and the handlers package,
    archive them beside the store, sign the whole archive when given a key, rename in."""
    if not NAME_RE.match(name):
        raise SettingsError(f"model name {name!r} must match {NAME_RE.pattern}")
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", str(version)):
        raise SettingsError(f"version {version!r} must be dotted digits, e.g. 1 or 2.1")
    run_dir, model_store = Path(run_dir), Path(model_store)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--run {run_dir}: no such run directory")
    private_key = load_private_key(sign_key) if sign_key else None  # a bad key fails first
    verify_manifest(run_dir)  # refuse to package a broken or tampered run dir
    if settings.engine == "onnxruntime":
        onnx_export.check_exportable()
    if (run_dir / REPORT_FILE).is_file():  # a bare PEFT adapter dir has no report
        refuse_weak(read_report(run_dir), str(run_dir), allow_weak)
    out = mar_path(model_store, name, version)
    signer = key_id(private_key.public_key()) if private_key else None
    if reuse and mar_is_current(out, run_dir, settings, signer):
        print(f"{out}: up to date; reusing it", file=sys.stderr)
        return out
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.v{version}.", dir=model_store) as tmp:
        tmp = Path(tmp)
        extra = tmp / "extra"
        shutil.copytree(run_dir, extra)
        if settings.engine == "onnxruntime":
            check = onnx_export.add_onnx(extra, settings.max_length)
            print(f"{', '.join(check['graphs'])}: exported (opset {check['opset']}); against "
                  f"PyTorch on {check['texts']} texts: max |dp| {check['max_abs_diff_probs']:.1e}, max "
                  f"|d pooled| {check['max_abs_diff_pooled']:.1e}, same answers", file=sys.stderr)
        package = Path(handlers.__file__).parent
        shutil.copytree(package, extra / "handlers",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", HANDLER_FILE))
        config = tmp / "model-config.yaml"
        config.write_text(yaml.safe_dump(settings.model_config(), sort_keys=False))
        export = tmp / "export"
        export.mkdir()
        cmd = [
            str(Path(sys.executable).parent / "torch-model-archiver"),
            "--model-name", name, "--version", str(version),
            "--handler", str(package / HANDLER_FILE),
            "--extra-files", str(extra), "--config-file", str(config),
            "--export-path", str(export), "--archive-format", "default",
        ]
        if not Path(cmd[0]).exists():
            cmd[0] = "torch-model-archiver"
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({proc.returncode}): "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        built = export / f"{name}.mar"
        if private_key is not None:
            sign_mar(built, private_key)
        with open(built, "rb") as f:
            os.fsync(f.fileno())
        os.replace(built, out)
    return out


def _signer(z: zipfile.ZipFile) -> str | None:
    """The key id an archive says it is signed by (verify_mar checks that claim)."""
    if SIGNATURE_NAME not in z.namelist():
        return None
    return json.loads(z.read(SIGNATURE_NAME)).get("key_id")


def signed_by(mar: Path) -> str | None:
    with zipfile.ZipFile(mar) as z:
        return _signer(z)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("archive", help="package a run dir as model_store/NAME.vN.mar")
    p.add_argument("--run", required=True, help="run directory from train or adapt")
    p.add_argument("--name", default="sentiment", help="model name (default: sentiment)")
    p.add_argument("--version", default="1", help="model version (default: 1)")
    p.add_argument("--model-store", default="model_store", help="default: model_store")
    p.add_argument("--reuse", action="store_true", help="keep an identical existing .mar")
    p.add_argument("--allow-weak", action="store_true",
                   help="archive a run marked weak (no better than the majority class)")
    p.add_argument("--sign-key", type=Path,
                   help="Ed25519 private key from `trainer keygen`: sign every file of the "
                        "archive (servers with trusted keys refuse unsigned archives)")
    config.add_arguments(p, ArchiveSettings)

    def run(args: argparse.Namespace) -> tuple[dict, int]:
        mar = build_archive(Path(args.run), args.name, args.version, Path(args.model_store),
                            config.from_args(ArchiveSettings, args), reuse=args.reuse,
                            allow_weak=args.allow_weak, sign_key=args.sign_key)
        return {"mar": str(mar), "bytes": mar.stat().st_size,
                "signed_by": signed_by(mar)}, 0

    p.set_defaults(func=run)
