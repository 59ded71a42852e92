"""`trainer archive --engine onnxruntime`: model.onnx in the .mar, in its manifest and its
signature; routed runs, missing packages and contradicting settings refused in one line."""

import hashlib
import json
import shutil
import sys
import zipfile

import pytest
import yaml

from handlers.errors import ConfigError
from handlers.manifest import MANIFEST_NAME, write_manifest
from handlers.onnx_engine import ONNX_FILE
from handlers.signing import SIGNATURE_NAME, load_trusted_keys, verify_mar
from trainer.common.errors import SettingsError
from trainer.packaging.archive import ArchiveSettings, build_archive, mar_is_current


def test_the_archive_carries_model_onnx_in_its_manifest_and_signature(onnx_mar, tiny_run):
    with zipfile.ZipFile(onnx_mar["mar"]) as z:
        digest = hashlib.sha256(z.read(ONNX_FILE)).hexdigest()
        manifest = json.loads(z.read(MANIFEST_NAME))
        signed = json.loads(z.read(SIGNATURE_NAME))["files"]
        config = yaml.safe_load(z.read("model-config.yaml"))
    assert manifest[ONNX_FILE] == digest and signed[ONNX_FILE] == digest
    run_manifest = json.loads((tiny_run / MANIFEST_NAME).read_text())
    assert {k: v for k, v in manifest.items() if k != ONNX_FILE} == run_manifest
    assert not (tiny_run / ONNX_FILE).exists()  # the run dir is left as it was
    assert config["handler"]["engine"] == "onnxruntime"
    verify_mar(onnx_mar["mar"], load_trusted_keys(str(onnx_mar["public"])))
    settings = ArchiveSettings(engine="onnxruntime")
    assert mar_is_current(onnx_mar["mar"], tiny_run, settings, onnx_mar["key_id"])  # --reuse
    assert not mar_is_current(onnx_mar["mar"], tiny_run, ArchiveSettings(), onnx_mar["key_id"])


def test_a_routed_run_is_refused_in_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "router.json").write_text("{}")
    write_manifest(run)
    with pytest.raises(SettingsError, match="routed run") as info:
        build_archive(run, "sentiment", "2", tmp_path / "store",
                      ArchiveSettings(engine="onnxruntime"), allow_weak=True)
    assert "--engine torch" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "store").exists()


def test_archiving_without_onnxruntime_names_the_package(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match="package onnxruntime is not installed"):
        build_archive(tiny_run, "sentiment", "1", tmp_path, ArchiveSettings(engine="onnxruntime"),
                      allow_weak=True)


def test_engine_settings_are_checked():
    with pytest.raises(SettingsError, match="engine must be one of"):
        ArchiveSettings(engine="tensorrt").validate()
    with pytest.raises(SettingsError) as info:
        ArchiveSettings(engine="onnxruntime", dtype="bfloat16", merge=False).validate()
    assert "dtype must be float32" in str(info.value) and "merge must be True" in str(info.value)
    ArchiveSettings(engine="onnxruntime").validate()
    assert ArchiveSettings().engine == "torch"


def test_real_minilm_exports_with_the_same_answers(tmp_path):
    """MiniLM's own 6 layers and tokenizer with a fresh 3-way head (no training: ~10 s); the
    export's own check runs, then 32 real sentences in batches of 16."""
    import torch

    from handlers.runtime import ModelRuntime, RuntimeSettings
    from trainer.data.sources import load_vader
    from trainer.model.lora import default_base_model, load_classifier
    from trainer.packaging.onnx_export import TOLERANCE, add_onnx

    torch.manual_seed(0)
    model, tokenizer = load_classifier(default_base_model(), ["negative", "neutral", "positive"],
                                       new_head=True)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_manifest(tmp_path)
    check = add_onnx(tmp_path, 64)
    assert check["changed_answers"] == 0 and check["max_abs_diff_probs"] <= TOLERANCE
    assert ONNX_FILE in json.loads((tmp_path / MANIFEST_NAME).read_text())
    settings = RuntimeSettings(max_length=64, monitor=False)
    eager = ModelRuntime.load(tmp_path, settings=settings)
    ort = ModelRuntime.load(tmp_path, settings=RuntimeSettings(max_length=64, monitor=False,
                                                               engine="onnxruntime"))
    texts = [e.text for e in load_vader("tweets")[:16] + load_vader("movie")[:16]]
    for batch in (texts[:16], texts[16:]):
        p0, f0, _ = eager.forward(batch, pooled=True)
        p1, f1, _ = ort.forward(batch, pooled=True)
        assert (p0 - p1).abs().max() < TOLERANCE and (f0 - f1).abs().max() < TOLERANCE
        assert torch.equal(p0.argmax(dim=1), p1.argmax(dim=1))
