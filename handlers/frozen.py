"""A production reference: a version's own served traffic, frozen as its drift reference.

The archive's reference holds the held-out texts of training time, a few hundred per domain, and
a two-sample test is only as sharp as its smaller sample: with 778 reference rows no window,
however long, sees a 10 % mixture. The version's live traffic, once an operator confirms it is
in-domain (or the archive's reference does not flag it), can be as large as the operator lets
it grow. `trainer drift --freeze-reference` writes it with a manifest (its sha256, signed when
a key is given) into the model store beside the archive and into the version's statistics
directory, where every worker adopts it at its next tick and starts a fresh window.

The manifest names the one file it covers and is written last, by rename: a worker sees either
the previous frozen reference or the new one, never a half-written file; one that fails its
manifest or signature is refused with the file named, and the worker keeps its reference.
"""

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from handlers.atomic import atomic_write_bytes
from handlers.errors import ConfigError, SignatureError
from handlers.features import Reference
from handlers.manifest import sha256_file
from handlers.signing import check_signature, sign_files

MANIFEST = "frozen_reference.manifest.json"
DOMAIN = "production"  # the one domain of a frozen reference: whatever production sends
FILE_NAME = re.compile(r"^frozen_reference\.[0-9a-f]{12}\.json$")
MIN_REQUESTS = 500  # below the archive reference's usual size a frozen one buys nothing


def freeze(current: Reference, features: np.ndarray, classes: np.ndarray) -> Reference:
    """The served rows as a one-domain reference; everything else (labels, features, the PCA
    projection, the calibration) is the archive's, so the features mean the same."""
    return Reference(current.labels, current.names, current.projection,
                     np.asarray(features, np.float32), np.asarray(classes, np.int16), [DOMAIN],
                     None, current.temperature, current.accuracy_fit)


def write(directory: Path, reference: Reference, requests_seen: int,
          private_key: Any | None = None) -> dict[str, Any]:
    """The reference file, then its manifest (signed with `private_key` when given)."""
    data = reference.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"frozen_reference.{digest[:12]}.json"
    files = {name: digest}
    document = sign_files(files, private_key) if private_key is not None else {"files": files}
    document = {**document, "requests": len(reference.classes),
                "requests_seen": requests_seen, "frozen_at": time.time()}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(directory / name, data)
    atomic_write_bytes(directory / MANIFEST, json.dumps(document, indent=2).encode())
    return document


def publish(source: Path, directory: Path) -> None:
    """Copy a written frozen reference (file, then manifest) into another directory: the same
    bytes and signature, not a second freeze."""
    manifest = json.loads((Path(source) / MANIFEST).read_text())
    for name in manifest["files"]:
        atomic_write_bytes(Path(directory) / name, (Path(source) / name).read_bytes())
    atomic_write_bytes(Path(directory) / MANIFEST, (Path(source) / MANIFEST).read_bytes())


def manifest_stamp(directory: Path) -> tuple[int, int] | None:
    """(mtime_ns, inode) of the manifest, or None: cheap enough to ask once a second."""
    try:
        st = (Path(directory) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


def load(directory: Path, trusted: dict[str, Any] | None) -> tuple[Reference, dict[str, Any]] | None:
    """The frozen reference of a statistics directory (None: none frozen). With trusted keys
    its manifest must carry a signature by one of them; the file must match its sha256."""
    path = Path(directory) / MANIFEST
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SignatureError(f"{path}: not a readable manifest ({e}); frozen reference refused") \
            from e
    if trusted is not None:
        if not isinstance(document, dict) or "signature" not in document:
            raise SignatureError(f"{path}: unsigned and trusted keys are configured; frozen "
                                 "reference refused")
        files = check_signature({k: document[k] for k in ("format", "key_id", "files",
                                                          "signature") if k in document},
                                trusted, str(path))
    else:
        files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, dict) or len(files) != 1:
        raise SignatureError(f"{path}: 'files' must name exactly one reference file")
    (name, digest), = files.items()
    if not isinstance(name, str) or not FILE_NAME.match(name):
        raise SignatureError(f"{path}: {name!r} is not a frozen reference file name")
    file = Path(directory) / name
    try:
        actual = sha256_file(file)
    except FileNotFoundError:
        raise SignatureError(f"{file}: listed in {path} but missing; frozen reference refused") \
            from None
    if actual != digest:
        raise SignatureError(f"{file}: sha256 {actual[:12]}… differs from its manifest's "
                             f"{str(digest)[:12]}…; frozen reference refused")
    try:
        reference = Reference.load(file)
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file}: not a drift reference ({e})") from e
    return reference, {"file": str(file), "sha256": digest,
                       "requests": len(reference.classes),
                       "frozen_at": document.get("frozen_at"),
                       "signed_by": document.get("key_id")}


def compatible(frozen: Reference, archive: Reference, where: str) -> None:
    """A frozen reference must describe the same features and labels as the archive's."""
    if frozen.names != archive.names or frozen.labels != archive.labels:
        raise ConfigError(f"{where}: features {frozen.names} / labels {frozen.labels} differ "
                          f"from the archive's; frozen reference refused")
