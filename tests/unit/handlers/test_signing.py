"""Signed archives: a real .mar built and signed by the trainer, checked as a zip (what rollout
does) and extracted (what the handler does), with every kind of change refused by name.
(The e2e twin on the real TorchServe is tests/e2e/test_signing.py.)"""

import hashlib
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest

from handlers import signing
from handlers.errors import SignatureError
from handlers.signing import SIGNATURE_NAME, verify_mar, verify_model_dir
from handlers.torchserve_handler import SentimentHandler
from tests.unit.handlers.conftest import make_context
from trainer.__main__ import main
from trainer.packaging.archive import ArchiveSettings, build_archive, signed_by
from trainer.packaging.keys import keygen


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    d = tmp_path_factory.mktemp("keys")
    return {"release": keygen(d / "release"), "other": keygen(d / "other")}


@pytest.fixture(scope="module")
def signed_mar(tiny_run: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_archive(tiny_run, "signed", "1", tmp_path_factory.mktemp("store"),
                         ArchiveSettings(), allow_weak=True,
                         sign_key=Path(keys["release"]["private_key"]))


def trust(keys, *names: str) -> dict:
    return signing.load_trusted_keys(",".join(keys[n]["public_key"] for n in names))


def rewrite(mar: Path, out: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of `mar` with entries replaced (bytes), removed (None) or added (new names)."""
    with zipfile.ZipFile(mar) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            if item.filename in change:
                data = change.pop(item.filename)
                if data is not None:
                    zout.writestr(item, data)
            else:
                zout.writestr(item, zin.read(item))
        for name, data in change.items():
            zout.writestr(name, data)
    return out


def extract(mar: Path, out: Path) -> Path:
    with zipfile.ZipFile(mar) as z:
        z.extractall(out)
    return out


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(keys):
    private = Path(keys["release"]["private_key"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert keys["release"]["key_id"] != keys["other"]["key_id"]
    with pytest.raises(Exception, match="exists; refusing to overwrite"):
        keygen(private.with_suffix(""))


def test_a_signed_archive_lists_every_file_and_verifies(signed_mar, keys, tmp_path):
    with zipfile.ZipFile(signed_mar) as z:
        names = {n for n in z.namelist() if not n.endswith("/")} - {SIGNATURE_NAME}
        signed = json.loads(z.read(SIGNATURE_NAME))["files"]
    assert set(signed) == names
    for must in ("torchserve_handler.py", "model-config.yaml", "MAR-INF/MANIFEST.json",
                 "model.safetensors", "tokenizer.json", "manifest.sha256.json",
                 "handlers/runtime.py"):
        assert must in signed
    assert signed_by(signed_mar) == keys["release"]["key_id"]
    assert verify_mar(signed_mar, trust(keys, "release"))["key_id"] == keys["release"]["key_id"]
    # Several trusted keys: any one of them is enough.
    verify_mar(signed_mar, trust(keys, "other", "release"))
    verify_model_dir(extract(signed_mar, tmp_path / "x"), trust(keys, "release"))


CHANGES = {
    "handler code": ("torchserve_handler.py", b"raise SystemExit('pwned')\n"),
    "model-config.yaml": ("model-config.yaml", b"batchSize: 1\n"),
    "MAR-INF": ("MAR-INF/MANIFEST.json", b"{}"),
    "run manifest": ("manifest.sha256.json", b"{}"),
    "weights": ("model.safetensors", b"\x00" * 64),
    "handlers package": ("handlers/drift.py", b"ALPHA = 1.0\n"),
}


@pytest.mark.parametrize("kind", CHANGES)
def test_a_changed_file_is_refused_naming_it(signed_mar, keys, tmp_path, kind):
    name, data = CHANGES[kind]
    bad = rewrite(signed_mar, tmp_path / "bad.mar", {name: data})
    message = rf"^{name}: sha256 .* changed after signing"
    with pytest.raises(SignatureError, match=message):
        verify_mar(bad, trust(keys, "release"))
    with pytest.raises(SignatureError, match=message):
        verify_model_dir(extract(bad, tmp_path / "x"), trust(keys, "release"))


def test_a_file_the_signature_does_not_list_is_refused_naming_it(signed_mar, keys, tmp_path):
    bad = rewrite(signed_mar, tmp_path / "bad.mar", {"handlers/sitecustomize.py": b"import os"})
    with pytest.raises(SignatureError, match="^handlers/sitecustomize.py: .* not listed"):
        verify_mar(bad, trust(keys, "release"))
    with pytest.raises(SignatureError, match="^handlers/sitecustomize.py: .* not listed"):
        verify_model_dir(extract(bad, tmp_path / "x"), trust(keys, "release"))


def test_bytecode_shipped_in_the_archive_is_refused_but_the_workers_own_is_not(
        signed_mar, keys, tmp_path):
    """A .pyc would run instead of its signed .py: refused in the .mar. The server writes its own
    caches beside the imported modules after extraction; those are skipped there."""
    pyc = "handlers/__pycache__/runtime.cpython-311.pyc"
    bad = rewrite(signed_mar, tmp_path / "bad.mar", {pyc: b"\x00" * 16})
    with pytest.raises(SignatureError, match=f"^{pyc}: .* not listed"):
        verify_mar(bad, trust(keys, "release"))
    model_dir = extract(signed_mar, tmp_path / "x")
    (model_dir / "handlers" / "__pycache__").mkdir()
    (model_dir / pyc).write_bytes(b"\x00" * 16)
    verify_model_dir(model_dir, trust(keys, "release"))


def test_a_removed_file_is_refused_naming_it(signed_mar, keys, tmp_path):
    bad = rewrite(signed_mar, tmp_path / "bad.mar", {"labels.json": None})
    with pytest.raises(SignatureError, match="^labels.json: signed but missing"):
        verify_mar(bad, trust(keys, "release"))


def test_unsigned_wrong_key_and_forged_list_are_refused(tiny_run, signed_mar, keys, tmp_path):
    unsigned = build_archive(tiny_run, "plain", "1", tmp_path, ArchiveSettings(),
                             allow_weak=True)
    with pytest.raises(SignatureError, match="unsigned archive"):
        verify_mar(unsigned, trust(keys, "release"))
    with pytest.raises(SignatureError, match="unsigned archive"):
        verify_model_dir(extract(unsigned, tmp_path / "x"), trust(keys, "release"))
    with pytest.raises(SignatureError, match=f"key '{keys['release']['key_id']}', which is not "
                                             "trusted"):
        verify_mar(signed_mar, trust(keys, "other"))
    # Change a file and rewrite its hash in the signed list: the signature no longer matches.
    with zipfile.ZipFile(signed_mar) as z:
        document = json.loads(z.read(SIGNATURE_NAME))
    document["files"]["torchserve_handler.py"] = hashlib.sha256(b"evil").hexdigest()
    forged = rewrite(signed_mar, tmp_path / "forged.mar",
                     {"torchserve_handler.py": b"evil",
                      SIGNATURE_NAME: json.dumps(document).encode()})
    with pytest.raises(SignatureError, match="signature does not match its file list"):
        verify_mar(forged, trust(keys, "release"))


def test_trust_fails_closed_on_keys_it_cannot_use(keys, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pub").write_text("not a key")
    for spec, message in ((str(tmp_path / "missing.pub"), "missing.pub: trusted key file not"),
                          (str(tmp_path / "empty"), "holds no \\*.pub file"),
                          (str(tmp_path / "junk.pub"), "junk.pub: not a PEM public key"),
                          (keys["release"]["private_key"], "not a PEM public key"),
                          (" , ", "no key file named")):
        with pytest.raises(SignatureError, match=message):
            signing.load_trusted_keys(spec)
    assert signing.trusted_keys_from_env({}) is None
    directory = Path(keys["release"]["public_key"]).parent
    assert set(signing.trusted_keys_from_env({signing.TRUST_ENV: str(directory)})) == {
        keys["release"]["key_id"], keys["other"]["key_id"]}


def test_the_handler_refuses_before_loading_when_trust_is_configured(
        tiny_run, signed_mar, keys, tmp_path, monkeypatch):
    monkeypatch.setenv(signing.TRUST_ENV, keys["release"]["public_key"])
    handler = SentimentHandler()
    with pytest.raises(SignatureError, match="unsigned archive"):
        handler.initialize(make_context(tiny_run))  # a bare run dir carries no signature
    assert handler.runtime is None
    handler.initialize(make_context(extract(signed_mar, tmp_path / "x")))
    assert handler.runtime is not None


def test_archive_with_reuse_re_signs_for_a_new_key(tiny_run, keys, tmp_path):
    store = tmp_path / "store"
    first = build_archive(tiny_run, "m", "1", store, ArchiveSettings(), allow_weak=True,
                          sign_key=Path(keys["release"]["private_key"]))
    again = build_archive(tiny_run, "m", "1", store, ArchiveSettings(), reuse=True,
                          allow_weak=True, sign_key=Path(keys["other"]["private_key"]))
    assert first == again and signed_by(again) == keys["other"]["key_id"]
    build_archive(tiny_run, "m", "1", store, ArchiveSettings(), reuse=True, allow_weak=True)
    assert signed_by(again) is None


def test_a_bad_sign_key_fails_before_anything_is_written(tiny_run, keys, tmp_path, capsys):
    store = tmp_path / "store"
    for key, message in ((tmp_path / "nope.key", "nope.key: no such signing key"),
                         (Path(keys["release"]["public_key"]), "not an unencrypted PEM private")):
        code = main(["archive", "--run", str(tiny_run), "--model-store", str(store),
                     "--allow-weak", "--sign-key", str(key)])
        assert code == 2 and message in capsys.readouterr().err
        assert not store.exists()


def test_rollout_verifies_before_it_touches_the_server(tiny_run, signed_mar, keys, tmp_path,
                                                       capsys):
    """Port 9 (discard) has no TorchServe: an error naming the archive's signature, not the
    connection, shows the check ran first. The trusted signed archive gets as far as the server."""
    store = tmp_path / "store"
    build_archive(tiny_run, "m", "2", store, ArchiveSettings(), allow_weak=True)
    shutil.copy(signed_mar, store / "signed.v1.mar")
    (tmp_path / "k").write_text(json.dumps({k: {"key": "x"} for k in
                                            ("management", "inference", "API")}))
    common = ["--model-store", str(store), "--allow-weak", "--key-file", str(tmp_path / "k"),
              "--management-url", "http://127.0.0.1:9", "--inference-url", "http://127.0.0.1:9",
              "--trusted-keys", keys["release"]["public_key"]]
    assert main(["rollout", "--model", "m", "--mar", "m.v2.mar", *common]) == 2
    assert "unsigned archive" in capsys.readouterr().err
    assert main(["rollout", "--model", "signed", "--mar", "signed.v1.mar", *common]) == 2
    err = capsys.readouterr().err
    assert "signature" not in err and "127.0.0.1:9" in err
