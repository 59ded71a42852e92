"""The ONNX Runtime engine against PyTorch on the same archive: the same answers, probabilities
and drift features within 1e-3; a changed model.onnx refused; a server without onnxruntime
refused in one line naming it."""

import shutil
import sys

import pytest
import torch
import yaml

from handlers.errors import ConfigError, IntegrityError
from handlers.runtime import ModelRuntime, RuntimeSettings
from handlers.torchserve_handler import SentimentHandler
from tests.unit.handlers.conftest import batch_of, make_context

TEXTS = ["I loved it.", "A dull, tedious, awful film that never ends.", "It is Tuesday.",
         "ok", "Markets fell sharply after the report, and analysts expect more losses.",
         "Très bien, merci !", "word " * 300]
TOLERANCE = 1e-3


def test_onnxruntime_answers_as_pytorch_does(onnx_mar):
    eager = ModelRuntime.load(onnx_mar["dir"], settings=RuntimeSettings(monitor=False))
    ort = ModelRuntime.load(onnx_mar["dir"], settings=RuntimeSettings(engine="onnxruntime",
                                                                      monitor=False))
    assert ort.model is None and ort.labels == eager.labels
    assert ort.micro_batch() == 4 < len(TEXTS)  # groups of 4 by length against one batch
    for batch in [TEXTS, TEXTS[:1], TEXTS[-2:]]:
        p0, f0, n0 = eager.forward(batch, pooled=True)
        p1, f1, n1 = ort.forward(batch, pooled=True)
        assert (p0 - p1).abs().max() < TOLERANCE and (f0 - f1).abs().max() < TOLERANCE
        assert torch.equal(n0, n1) and f1.shape == f0.shape
        assert ort.forward(batch)[1] is None
    assert [r["label"] for r in ort.predict(TEXTS)] == [r["label"] for r in eager.predict(TEXTS)]
    assert ort.describe()["engine"] == "onnxruntime" and ort.describe()["dtype"] == "float32"


def test_onnxruntime_feeds_the_drift_monitor(onnx_mar):
    ort = ModelRuntime.load(onnx_mar["dir"], settings=RuntimeSettings(engine="onnxruntime"),
                            name="onnx-monitor")
    try:
        assert ort.monitor is not None
        ort.predict(TEXTS[:3])
        assert ort.describe()["stats"]["window_size"] == 3
    finally:
        ort.monitor.close()


def test_a_changed_model_onnx_is_refused_naming_it(onnx_mar, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(onnx_mar["dir"], copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.onnx"):
        ModelRuntime.load(copy, settings=RuntimeSettings(engine="onnxruntime", monitor=False))


def _archived_context(model_dir):
    return make_context(model_dir, yaml.safe_load((model_dir / "model-config.yaml").read_text()))


def test_the_handler_serves_an_onnx_archive(onnx_mar):
    handler = SentimentHandler()
    ctx = _archived_context(onnx_mar["dir"])
    handler.initialize(ctx)
    try:
        headers, inputs, ids = batch_of([("text/plain", b"what a lovely day"),
                                         ("application/json", {"text": "awful"})])
        ctx.request_processor, ctx.request_ids = headers, ids
        out = handler.handle(inputs, ctx)
        assert [r["label"] in handler.runtime.labels for r in out] == [True, True]
        assert handler.runtime.engine is not None
    finally:
        handler.runtime.monitor.close()


def test_the_handler_refuses_without_onnxruntime_in_one_line(onnx_mar, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError) as info:
        SentimentHandler().initialize(_archived_context(onnx_mar["dir"]))
    message = str(info.value)
    assert "package onnxruntime is not installed" in message and "\n" not in message
