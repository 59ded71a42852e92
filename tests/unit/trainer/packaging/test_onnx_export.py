"""`trainer archive --engine onnxruntime`: model.onnx in the .mar, in its manifest and its
signature (a routed run: one graph per expert); missing packages and contradicting settings
refused in one line."""

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


def test_a_routed_run_exports_one_graph_per_expert_with_the_same_answers(routed_run, tmp_path):
    """Each expert gets its own graph, listed in the manifest; the ONNX engine routes each row
    as the PyTorch experts do and answers it with that row's expert: same answers, features
    within tolerance, on a mixed batch of both domains. A changed expert graph is refused."""
    import torch

    from handlers.errors import IntegrityError
    from handlers.routing import ROUTER_FILE
    from handlers.runtime import ModelRuntime, RuntimeSettings
    from trainer.data.sources import load_vader
    from trainer.packaging.onnx_export import TOLERANCE, add_onnx

    run = tmp_path / "run"
    shutil.copytree(routed_run, run)
    experts = set(json.loads((run / ROUTER_FILE).read_text())["experts"].values())
    check = add_onnx(run, 64)
    assert check["changed_answers"] == 0 and len(check["graphs"]) == len(experts | {
        "model.safetensors"}) >= 2
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    assert all(g in manifest for g in check["graphs"])
    eager = ModelRuntime.load(run, settings=RuntimeSettings(max_length=64, monitor=False))
    ort = ModelRuntime.load(run, settings=RuntimeSettings(max_length=64, monitor=False,
                                                          engine="onnxruntime"))
    assert ort.describe()["experts"] == eager.describe()["experts"] is not None
    texts = [e.text for e in load_vader("nyt")[:12] + load_vader("movie")[:12]]
    texts = texts[::2] + texts[1::2]  # both domains in every batch
    p0, f0, _ = eager.forward(texts, pooled=True)
    assert len(set(eager.model.last_routes)) == 2  # the batch really is split between experts
    p1, f1, _ = ort.forward(texts, pooled=True)
    assert (p0 - p1).abs().max() < TOLERANCE and (f0 - f1).abs().max() < TOLERANCE
    assert torch.equal(p0.argmax(dim=1), p1.argmax(dim=1))
    other = next(g for g in check["graphs"] if g != ONNX_FILE)
    with open(run / other, "ab") as f:
        f.write(b"\0")
    with pytest.raises(IntegrityError, match=other):
        ModelRuntime.load(run, settings=RuntimeSettings(monitor=False, engine="onnxruntime"))


def test_each_expert_graph_is_checked_against_its_own_expert(routed_run, tmp_path,
                                                            monkeypatch):
    """An older expert's graph traced from the wrong weights is refused (each graph is checked
    against its own expert, not only on the texts the router happens to send it), and nothing
    is added to the manifest."""
    from trainer.packaging import onnx_export

    run = tmp_path / "run"
    shutil.copytree(routed_run, run)
    before = (run / MANIFEST_NAME).read_text()
    export, newest = onnx_export.export, {}

    def wrong_weights(model, tokenizer, labels, path):
        newest.setdefault("model", model)  # model.onnx is exported first
        export(newest["model"], tokenizer, labels, path)

    monkeypatch.setattr(onnx_export, "export", wrong_weights)
    with pytest.raises(SettingsError, match="differs from PyTorch"):
        onnx_export.add_onnx(run, 64)
    assert (run / MANIFEST_NAME).read_text() == before


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
