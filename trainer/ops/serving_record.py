"""What a model store serves: its registered versions and the default, kept beside the archives.

TorchServe forgets registrations on restart (or, restoring from its snapshot, may pick another
default: pytorch/serve#2744), so every rollout and rollback records the outcome here and
`trainer restore` puts it back on a freshly started server.
"""

import json
from pathlib import Path
from typing import Any

from trainer.common.artifacts import atomic_write_json
from trainer.common.errors import DataError
from trainer.ops.client import TorchServeClient


def record_path(model_store: Path, model: str) -> Path:
    return Path(model_store) / f".{model}.serving.json"


def write_record(model_store: Path, model: str, registered: list[str], default: str) -> None:
    atomic_write_json(record_path(model_store, model), {
        "model": model, "default": default,
        "versions": {v: f"{model}.v{v}.mar" for v in registered}})


def read_record(model_store: Path, model: str) -> dict[str, Any]:
    """The record, checked against the store (every archive present) before any server call."""
    path = record_path(model_store, model)
    try:
        record = json.loads(path.read_text())
        wanted, default = dict(record["versions"]), str(record["default"])
    except FileNotFoundError as e:
        raise DataError(f"{path}: no serving record for {model!r} (written by `trainer "
                        f"rollout` and `trainer rollback`)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a serving record ({e})") from e
    missing = [mar for mar in wanted.values() if not (Path(model_store) / mar).is_file()]
    if missing or default not in wanted:
        raise DataError(f"{path}: default v{default} or archives {missing} are not in the "
                        f"model store {model_store}")
    return {"model": model, "default": default, "versions": wanted}


def restore(client: TorchServeClient, record: dict[str, Any], workers: int = 1
            ) -> dict[str, Any]:
    """Register every recorded version the server lacks, then set the recorded default."""
    model, default, wanted = record["model"], record["default"], record["versions"]
    registered, _ = client.versions(model)
    added = [v for v in wanted if v not in registered]
    for v in added:
        client.register(wanted[v], model, workers=workers)
    client.set_default(model, default)
    return {"model": model, "default": default, "registered": added,
            "versions": client.versions(model)[0]}
