"""ModelRuntime on a tiny trained run dir: verify-then-load, batched predictions, settings."""

import shutil

import pytest
import torch

from handlers.errors import ConfigError, IntegrityError
from handlers.runtime import ModelRuntime, RuntimeSettings, select_device


def test_predicts_every_text_with_probabilities(tiny_run):
    rt = ModelRuntime.load(tiny_run, name="sentiment", version="3")
    texts = ["I loved it.", "A dull, tedious, awful film that never ends.", "It is Tuesday."]
    out = rt.predict(texts)
    assert len(out) == 3
    for row in out:
        assert row["label"] in rt.labels == ["negative", "neutral", "positive"]
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)
        assert (row["model"], row["version"]) == ("sentiment", "3")


def test_batch_results_equal_one_by_one(tiny_run):
    """Dynamic padding must not change any prediction."""
    rt = ModelRuntime.load(tiny_run)
    texts = ["short", "a somewhat longer sentence with many more tokens in it than the first"]
    batched = rt.probabilities(texts)
    alone = torch.cat([rt.probabilities([t]) for t in texts])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_tampered_weights_are_refused(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(IntegrityError, match="model.safetensors"):
        ModelRuntime.load(copy)


def test_tampered_tokenizer_is_refused(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "tokenizer_config.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer_config.json"):
        ModelRuntime.load(copy)


def test_settings_report_every_problem():
    with pytest.raises(ConfigError) as info:
        RuntimeSettings.from_dict({"max_chars": 0, "dtype": "int8", "threads": -1})
    for word in ("max_chars", "dtype", "threads"):
        assert word in str(info.value)
    with pytest.raises(ConfigError, match="unknown key"):
        RuntimeSettings.from_dict({"max_char": 10})


def test_device_falls_back_to_cpu_without_cuda():
    # No GPU on the build machines: the cuda branch is exercised by bench/gpu.py on a GPU host.
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(select_device(0)) == expected
    assert str(select_device(None)) == "cpu"
    assert str(select_device(-1)) == "cpu"
