"""Ed25519-signed archives: one signed list of every file's sha256, checked against the files.

The sha256 manifest of a run dir (handlers.manifest) catches corruption of the model files; this
signature covers the whole archive (handler code, model-config.yaml, MAR-INF, drift reference,
the manifest itself) and refuses any file it does not list, so only a holder of the private key
can produce an archive the server accepts.

Where it runs: `trainer rollout` verifies the .mar with the operator's installed code before the
server sees it (the check that a malicious archive cannot skip); the handler verifies the
extracted archive again at load, so an archive copied into the model store by hand, or restored
from a snapshot, is refused too. The handler check runs code from the archive itself, so it
guards against changed or wrongly signed archives, not against a hostile handler: keep the model
store writable only by whoever runs rollout.
"""

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

from handlers.errors import SignatureError
from handlers.manifest import sha256_file, sha256_stream

SIGNATURE_NAME = "driftserve.signature.json"
TRUST_ENV = "DRIFTSERVE_TRUSTED_KEYS"  # public key files or directories of *.pub, comma-separated
FORMAT = "driftserve-signature/1"
# Python writes bytecode caches beside the handler modules when the worker imports them; they
# are skipped in an extracted model dir only (a .mar carrying one is refused by verify_mar).
RUNTIME_DIRS = ("__pycache__",)


def key_id(public_key: Any) -> str:
    """Short stable name of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair() -> tuple[bytes, bytes, str]:
    """(private PEM, public PEM, key id) of a new Ed25519 key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public, key_id(key.public_key())


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: no such signing key (make one with trainer keygen)") \
            from e
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, expected an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError as e:
        raise SignatureError(f"{path}: trusted key file not found") from e
    except (ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not a PEM public key ({e})") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: a {type(key).__name__}, expected an Ed25519 public key")
    return key


def load_trusted_keys(spec: str) -> dict[str, Any]:
    """Keys by id from a comma-separated list of .pub files and directories of them.
    Fails closed: a spec that names no usable key is an error, never "trust nothing"."""
    keys: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part)
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        if path.is_dir() and not files:
            raise SignatureError(f"{path}: trusted key directory holds no *.pub file")
        for f in files:
            key = load_public_key(f)
            keys[key_id(key)] = key
    if not keys:
        raise SignatureError(f"trusted keys {spec!r}: no key file named")
    return keys


def trusted_keys_from_env(environ: dict[str, str] | None = None) -> dict[str, Any] | None:
    """None when trust is not configured (archives are then checked by their manifest only)."""
    spec = (os.environ if environ is None else environ).get(TRUST_ENV, "").strip()
    return load_trusted_keys(spec) if spec else None


def _payload(files: dict[str, str], kid: str) -> bytes:
    return json.dumps({"format": FORMAT, "key_id": kid, "files": files}, sort_keys=True,
                      separators=(",", ":")).encode()


def sign_files(files: dict[str, str], private_key: Any) -> dict[str, Any]:
    """The signature document for `files` (name -> sha256 hex)."""
    kid = key_id(private_key.public_key())
    signature = private_key.sign(_payload(files, kid))
    return {"format": FORMAT, "key_id": kid, "files": dict(sorted(files.items())),
            "signature": base64.b64encode(signature).decode()}


def check_signature(document: Any, trusted: dict[str, Any], where: str) -> dict[str, str]:
    """The signed file list, once the document parses and its signature is by a trusted key."""
    from cryptography.exceptions import InvalidSignature

    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise SignatureError(f"{where}: {SIGNATURE_NAME} is not a {FORMAT} document")
    files, kid, sig = document.get("files"), document.get("key_id"), document.get("signature")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise SignatureError(f"{where}: {SIGNATURE_NAME}: 'files' must map names to sha256")
    if kid not in trusted:
        raise SignatureError(f"{where}: signed by key {kid!r}, which is not trusted "
                             f"(trusted: {', '.join(sorted(trusted))}); refusing to load")
    try:
        trusted[kid].verify(base64.b64decode(str(sig), validate=True), _payload(files, kid))
    except (InvalidSignature, ValueError) as e:
        raise SignatureError(f"{where}: the signature does not match its file list (key "
                             f"{kid}); the list was changed after signing, refusing to load") \
            from e
    return files


def compare_files(signed: dict[str, str], actual: dict[str, str], where: str) -> None:
    """Name the first file that was added, removed or changed after signing."""
    for name in sorted(actual):
        if name not in signed:
            raise SignatureError(f"{name}: in {where} but not listed in the signature; "
                                 "refusing to load")
    for name in sorted(signed):
        if name not in actual:
            raise SignatureError(f"{name}: signed but missing from {where}; refusing to load")
        if actual[name] != signed[name]:
            raise SignatureError(f"{name}: sha256 {actual[name][:12]}… differs from the signed "
                                 f"{signed[name][:12]}…; changed after signing, refusing to load")


def mar_digests(mar: Path) -> dict[str, str]:
    """sha256 of every file entry of a .mar (zip), except the signature itself."""
    out: dict[str, str] = {}
    with zipfile.ZipFile(mar) as z:
        for info in z.infolist():
            if info.is_dir() or info.filename == SIGNATURE_NAME:
                continue
            if info.filename in out:
                raise SignatureError(f"{mar}: entry {info.filename} appears twice")
            with z.open(info) as f:
                out[info.filename] = sha256_stream(f)
    return out


def dir_digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every file under an extracted archive, except the signature and bytecode caches."""
    model_dir = Path(model_dir)
    out: dict[str, str] = {}
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_dir() or rel.as_posix() == SIGNATURE_NAME or set(rel.parts) & set(RUNTIME_DIRS):
            continue
        out[rel.as_posix()] = sha256_file(p)
    return out


def sign_mar(mar: Path, private_key: Any) -> dict[str, Any]:
    """Append the signature of every entry to the archive (in place: call on a staged copy)."""
    with zipfile.ZipFile(mar) as z:
        if SIGNATURE_NAME in z.namelist():
            raise SignatureError(f"{mar}: already signed")
    document = sign_files(mar_digests(mar), private_key)
    with zipfile.ZipFile(mar, "a", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(SIGNATURE_NAME, json.dumps(document, indent=2))
    return document


def verify_mar(mar: Path, trusted: dict[str, Any]) -> dict[str, Any]:
    """Check a .mar before it is registered; returns the signature document."""
    mar = Path(mar)
    try:
        with zipfile.ZipFile(mar) as z:
            copies = z.namelist().count(SIGNATURE_NAME)
            if copies != 1:
                raise SignatureError(f"{mar}: unsigned archive ({SIGNATURE_NAME} missing) and "
                                     "trusted keys are configured; refusing it" if copies == 0
                                     else f"{mar}: {copies} copies of {SIGNATURE_NAME}")
            document = json.loads(z.read(SIGNATURE_NAME))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{mar}: cannot read the archive's signature ({e})") from e
    signed = check_signature(document, trusted, str(mar))
    compare_files(signed, mar_digests(mar), str(mar))
    return document


def verify_model_dir(model_dir: Path, trusted: dict[str, Any]) -> dict[str, Any]:
    """Check an extracted archive (the handler's model_dir) before anything in it is loaded."""
    model_dir = Path(model_dir)
    path = model_dir / SIGNATURE_NAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise SignatureError(f"{model_dir}: unsigned archive ({SIGNATURE_NAME} missing) and "
                             f"trusted keys are configured ({TRUST_ENV}); refusing to load") \
            from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{path}: not valid JSON ({e})") from e
    signed = check_signature(document, trusted, str(model_dir))
    compare_files(signed, dir_digests(model_dir), str(model_dir))
    return document
