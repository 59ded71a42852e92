"""The held-out texts of every domain a version serves, carried from run dir to run dir, so each
new version's drift reference is rebuilt with its own model over everything it serves."""

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.common.errors import DataError

if TYPE_CHECKING:
    from handlers.features import Reference

REFERENCE_TEXTS_FILE = "reference_texts.json"


def distil_half(text: str) -> bool:
    """True for the held-out texts `adapt --distill-held-out` may train on; a candidate trained
    so is judged by the rollout gate on the others only."""
    return hashlib.sha256(text.encode()).digest()[0] % 2 == 0


def reference_texts_bytes(texts: Mapping[str, Sequence[str]]) -> bytes:
    return (json.dumps({d: list(t) for d, t in texts.items()}, indent=1)
            + "\n").encode()


def read_reference_texts(run_dir: Path) -> dict[str, list[str]]:
    """{domain: texts}; empty for run dirs made before the file existed."""
    path = Path(run_dir) / REFERENCE_TEXTS_FILE
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict) or not all(
            isinstance(v, list) and all(isinstance(t, str) for t in v) for v in raw.values()):
        raise DataError(f"{path}: expected {{domain: [text, ...]}}")
    return raw


def build_reference_for(model: Any, tokenizer: Any, texts: Mapping[str, Sequence[str]],
                        components: int, max_length: int) -> "Reference":
    """One reference over every served domain, each row tagged with its domain."""
    from trainer.data.reference import build_reference  # the model stack: not for the gate's reads

    flat = [(d, t) for d, items in texts.items() for t in items]
    return build_reference(model, tokenizer, [t for _, t in flat],
                           min(components, len(flat)), max_length,
                           domains=[d for d, _ in flat])
