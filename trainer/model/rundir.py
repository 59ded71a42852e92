"""A run directory: merged safetensors weights, tokenizer, label map, report, sha256 manifest."""

import json
from pathlib import Path
from typing import Any

from handlers.manifest import verify_manifest, write_manifest
from handlers.routing import with_experts
from trainer.common.artifacts import atomic_dir
from trainer.model.lora import load_classifier

LABELS_FILE = "labels.json"
REPORT_FILE = "report.json"


def save_run(out: Path, model: Any, tokenizer: Any, labels: list[str],
             report: dict[str, Any], extra: dict[str, bytes] | None = None) -> Path:
    """Write everything into a hidden sibling, hash it, then rename into place."""
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / LABELS_FILE).write_text(json.dumps(labels))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        if any(p.suffix in (".bin", ".pt", ".pth", ".pkl") for p in tmp.iterdir()):
            raise RuntimeError("refusing to write pickle weights; safetensors only")
        write_manifest(tmp)
    return Path(out)


def read_report(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / REPORT_FILE).read_text())


def load_run(run_dir: Path, experts: bool = True) -> tuple[Any, Any, list[str], dict[str, Any]]:
    """Verify the manifest, then load model, tokenizer, labels and report. The model answers as
    the served version does (behind its router, handlers/routing.py); `experts=False` gives the
    newest expert alone, the one a next step trains from."""
    run_dir = Path(run_dir)
    verify_manifest(run_dir)
    labels = json.loads((run_dir / LABELS_FILE).read_text())
    model, tokenizer = load_classifier(run_dir, labels)
    if experts:
        model = with_experts(run_dir, model.eval())
    return model, tokenizer, labels, read_report(run_dir)
