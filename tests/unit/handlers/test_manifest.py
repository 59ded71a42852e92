"""The sha256 manifest refuses any changed, missing or unlisted-path file, naming it."""

import json

import pytest

from handlers.errors import IntegrityError
from handlers.manifest import MANIFEST_NAME, verify_manifest, write_manifest


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.safetensors").write_bytes(b"\x00" * 64)
    write_manifest(tmp_path)
    return tmp_path


def test_intact_dir_verifies(model_dir):
    assert set(verify_manifest(model_dir)) == {"config.json", "sub/w.safetensors"}


def test_changed_file_is_named(model_dir):
    (model_dir / "sub" / "w.safetensors").write_bytes(b"\x01" * 64)
    with pytest.raises(IntegrityError, match="sub/w.safetensors: sha256"):
        verify_manifest(model_dir)


def test_missing_file_is_named(model_dir):
    (model_dir / "config.json").unlink()
    with pytest.raises(IntegrityError, match="config.json: listed in the manifest but missing"):
        verify_manifest(model_dir)


def test_missing_or_corrupt_manifest(model_dir):
    (model_dir / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        verify_manifest(model_dir)
    (model_dir / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match="manifest missing"):
        verify_manifest(model_dir)


def test_path_escape_is_refused(model_dir):
    (model_dir / MANIFEST_NAME).write_text(json.dumps({"../x": "0" * 64}))
    with pytest.raises(IntegrityError, match="outside the model directory"):
        verify_manifest(model_dir)
