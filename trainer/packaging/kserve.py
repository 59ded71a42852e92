"""`trainer kserve-export`: a `.mar` from the model store -> the folder KServe's TorchServe runtime
mounts at /mnt/models (config/config.properties + model-store/), plus an InferenceService to apply.

The same archive serves unchanged: TorchServe's `kserve` / `kservev2` envelope turns the KServe
request into the instances the handler already understands ({"text": ...} or a string).
"""

import argparse
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from trainer.common import config
from trainer.common.artifacts import atomic_dir
from trainer.common.config import check, setting
from trainer.common.errors import DataError
from trainer.packaging.archive import mar_path

MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
ENVELOPES = {"v1": "kserve", "v2": "kservev2"}
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KServeSettings:
    protocol: str = setting("v1", "v1: POST /v1/models/NAME:predict {instances}; "
                                  "v2: POST /v2/models/NAME/infer {inputs}")
    storage_uri: str = setting("pvc://driftserve-models/sentiment",
                               "where the exported folder will be uploaded (storageUri)")
    gpus: int = setting(0, "nvidia.com/gpu per replica; 0 serves on CPU")
    workers: int = setting(1, "TorchServe workers per GPU (or in all, on CPU)")
    memory: str = setting("4Gi", "memory limit per replica")

    def validate(self) -> None:
        problems = []
        if self.protocol not in ENVELOPES:
            problems.append(f"protocol must be v1 or v2, got {self.protocol!r}")
        if self.gpus < 0:
            problems.append(f"gpus must be >= 0, got {self.gpus}")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if "://" not in self.storage_uri:
            problems.append(f"storage_uri must be a URI such as pvc://… or s3://…, "
                            f"got {self.storage_uri!r}")
        check(problems, "kserve settings")


def archive_config(mar: Path) -> dict:
    """The model-config.yaml inside the archive (batch settings carried into the snapshot)."""
    try:
        with zipfile.ZipFile(mar) as z:
            return yaml.safe_load(z.read("model-config.yaml")) or {}
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{mar}: not an archive built by `trainer archive` ({e})") from e


def properties(name: str, version: str, mar: str, cfg: dict, s: KServeSettings) -> str:
    """config.properties for the runtime container. The snapshot loads the model at start-up;
    TorchServe batching is off because the KServe envelopes read only the first request of a
    batch (a KServe request carries its own batch of instances)."""
    workers = s.workers * max(1, s.gpus)
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: {
        "defaultVersion": True, "marName": mar, "minWorkers": workers, "maxWorkers": workers,
        "batchSize": 1, "maxBatchDelay": cfg.get("maxBatchDelay", 2),
        "responseTimeout": cfg.get("responseTimeout", 120)}}}}
    lines = [
        "# Written by `python -m trainer kserve-export` for KServe's TorchServe runtime.",
        "# KServe's wrapper in the pod forwards to inference_address and cannot send TorchServe's",
        "# bearer token, so token authorization is off here: guard the InferenceService with",
        "# KServe/Istio authentication. The management API stays on loopback, model registration",
        "# over it is off, and only the archive in model-store/ is loaded.",
        "inference_address=http://0.0.0.0:8085",
        "management_address=http://127.0.0.1:8081",
        "metrics_address=http://0.0.0.0:8082",
        "grpc_inference_port=7070",
        "grpc_management_port=7071",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "allowed_urls=^model-store-files-only$",
        "enable_envvars_config=true",
        f"service_envelope={ENVELOPES[s.protocol]}",
        "metrics_mode=prometheus",
        f"metrics_config={MOUNT}/config/metrics.yaml",
        "max_request_size=1048576",
        "max_response_size=1048576",
        f"number_of_gpu={s.gpus}",
        f"model_store={MOUNT}/model-store",
        f"model_snapshot={json.dumps(snapshot)}",
    ]
    return "\n".join(lines) + "\n"


def inference_service(name: str, s: KServeSettings) -> dict:
    limits = {"cpu": "2", "memory": s.memory}
    if s.gpus:
        limits["nvidia.com/gpu"] = str(s.gpus)
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": name},
            "spec": {"predictor": {"model": {
                "modelFormat": {"name": "pytorch"}, "protocolVersion": s.protocol,
                "storageUri": s.storage_uri, "resources": {"limits": limits}}}}}


def export(model_store: Path, name: str, version: str, out: Path, s: KServeSettings) -> Path:
    """Check the archive first, then write the whole folder atomically."""
    s.validate()
    mar = mar_path(model_store, name, version)
    if not mar.is_file():
        raise FileNotFoundError(f"{mar}: no such archive; build it with `trainer archive`")
    cfg = archive_config(mar)
    with atomic_dir(Path(out)) as tmp:
        (tmp / "model-store").mkdir()
        shutil.copy2(mar, tmp / "model-store" / mar.name)
        (tmp / "config").mkdir()
        (tmp / "config" / "config.properties").write_text(
            properties(name, version, mar.name, cfg, s))
        shutil.copy2(ROOT / "metrics.yaml", tmp / "config" / "metrics.yaml")
        (tmp / "inferenceservice.yaml").write_text(
            yaml.safe_dump(inference_service(name, s), sort_keys=False))
    return Path(out)


def register(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("kserve-export",
                         help="write a model-store archive as KServe's TorchServe storage layout")
    p.add_argument("--name", default="sentiment", help="model name (default: sentiment)")
    p.add_argument("--version", required=True, help="archive version, e.g. 2")
    p.add_argument("--model-store", default="model_store", help="default: model_store")
    p.add_argument("--out", required=True, help="folder to write (upload it to storage_uri)")
    config.add_arguments(p, KServeSettings)

    def run(args: argparse.Namespace) -> tuple[dict, int]:
        out = export(Path(args.model_store), args.name, args.version, Path(args.out),
                     config.from_args(KServeSettings, args))
        return {"out": str(out), "files": sorted(str(f.relative_to(out))
                                                 for f in out.rglob("*") if f.is_file())}, 0

    p.set_defaults(func=run)
