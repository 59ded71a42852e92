"""sha256 manifest of a run directory: written by the trainer, verified before anything loads."""

import hashlib
import json
from pathlib import Path
from typing import BinaryIO

from handlers.errors import IntegrityError

MANIFEST_NAME = "manifest.sha256.json"
_CHUNK = 1 << 20


def sha256_stream(f: BinaryIO) -> str:
    """sha256 of an open binary file (or zip entry), read in chunks."""
    digest = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def build_manifest(directory: Path) -> dict[str, str]:
    """Hash every file under `directory` (relative POSIX paths), except the manifest itself."""
    directory = Path(directory)
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def write_manifest(directory: Path, files: dict[str, str] | None = None) -> dict[str, str]:
    """Write `files` (default: every file under `directory`, hashed now) as its manifest."""
    files = build_manifest(directory) if files is None else files
    (Path(directory) / MANIFEST_NAME).write_text(json.dumps(files, indent=2, sort_keys=True))
    return files


def add_to_manifest(directory: Path, name: str) -> dict[str, str]:
    """List one more file, written beside a verified run's files (the archive's model.onnx)."""
    files = read_manifest(directory)
    files[name] = sha256_file(Path(directory) / name)
    return write_manifest(directory, files)


def read_manifest(directory: Path) -> dict[str, str]:
    path = Path(directory) / MANIFEST_NAME
    try:
        files = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise IntegrityError(f"{path}: manifest missing; refusing to load unverified files") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path}: manifest is not valid JSON ({e})") from e
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise IntegrityError(f"{path}: manifest must map file names to sha256 hex digests")
    return files


def verify_manifest(directory: Path) -> dict[str, str]:
    """Check every listed file's hash; raise IntegrityError naming the first file that differs."""
    directory = Path(directory)
    files = read_manifest(directory)
    if not files:
        raise IntegrityError(f"{directory / MANIFEST_NAME}: manifest lists no files")
    for name, expected in files.items():
        path = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise IntegrityError(f"manifest entry {name!r} points outside the model directory")
        if not path.is_file():
            raise IntegrityError(f"{name}: listed in the manifest but missing from {directory}")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{name}: sha256 {actual[:12]}… does not match the manifest ({expected[:12]}…); "
                "the model files were changed after training, refusing to load"
            )
    return files
