"""ModelRuntime on a tiny trained run dir: verify-then-load, batched predictions, settings."""

import shutil

import pytest
import torch

from handlers import runtime
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


@pytest.mark.parametrize("size", [1, 2, 3])
def test_micro_batches_answer_in_input_order_as_one_batch_does(tiny_run, size):
    """A batch sorted by length and run in groups of `size` gives every row the answer,
    features and token count it gets in one padded batch, in the caller's order."""
    whole = ModelRuntime.load(tiny_run, settings=RuntimeSettings(monitor=False))
    grouped = ModelRuntime.load(tiny_run, settings=RuntimeSettings(monitor=False,
                                                                   micro_batch=size))
    assert (whole.micro_batch(), grouped.micro_batch()) == (0, size)
    texts = ["a much longer sentence, with many more tokens in it than any of the others here",
             "short", "ok", "a middling sentence of some length", "no", "fine, I guess",
             "another rather long sentence that the sort must move back where it came from"]
    p0, f0, t0 = whole.forward(texts, pooled=True)
    p1, f1, t1 = grouped.forward(texts, pooled=True)
    assert torch.allclose(p0, p1, atol=1e-5) and torch.allclose(f0, f1, atol=1e-5)
    assert torch.equal(t0, t1) and t0[1] < t0[0]  # counts in input order, not sorted
    assert grouped.forward(texts)[1] is None


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
        RuntimeSettings.from_dict({"max_chars": 0, "dtype": "int8", "threads": -1,
                                   "micro_batch": -2})
    for word in ("max_chars", "dtype", "threads", "micro_batch"):
        assert word in str(info.value)
    with pytest.raises(ConfigError, match="unknown key"):
        RuntimeSettings.from_dict({"max_char": 10})


def test_device_falls_back_to_cpu_without_cuda():
    # No GPU on the build machines: the cuda branch is exercised by bench/gpu.py on a GPU host.
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert str(select_device(0)) == expected
    assert str(select_device(None)) == "cpu"
    assert str(select_device(-1)) == "cpu"


@pytest.fixture(scope="module")
def adapter_pair(tiny_base, tmp_path_factory):
    """The same random LoRA saved merged (run dir) and unmerged (base/ + PEFT adapter)."""
    from bench.serve import build_models

    texts = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "taxes", "rain"] * 4)]
    return build_models(tmp_path_factory.mktemp("pair"), tiny_base, texts)


def test_adapter_archive_is_merged_at_load_and_matches_the_merged_run(adapter_pair):
    from peft import PeftModel

    merged_dir, adapter_dir = adapter_pair
    texts = ["I loved it.", "Markets fell sharply on Tuesday.", "meh"]
    merged = ModelRuntime.load(merged_dir, settings=RuntimeSettings(monitor=False))
    at_load = ModelRuntime.load(adapter_dir, settings=RuntimeSettings(monitor=False))
    unmerged = ModelRuntime.load(adapter_dir, settings=RuntimeSettings(monitor=False, merge=False))
    assert not isinstance(at_load.model, PeftModel) and isinstance(unmerged.model, PeftModel)
    assert not any("lora" in name for name, _ in at_load.model.named_parameters())
    reference = merged.probabilities(texts)
    assert torch.allclose(at_load.probabilities(texts), reference, atol=1e-5)
    assert torch.allclose(unmerged.probabilities(texts), reference, atol=1e-5)
    assert merged.labels == at_load.labels == ["negative", "neutral", "positive"]


def test_adapter_archive_base_weights_are_verified(adapter_pair, tmp_path):
    copy = tmp_path / "adapter"
    shutil.copytree(adapter_pair[1], copy)
    with open(copy / "base" / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(IntegrityError, match="base/model.safetensors"):
        ModelRuntime.load(copy)


@pytest.mark.parametrize("key", ["merge", "monitor"])
def test_boolean_settings_reject_strings(key):
    with pytest.raises(ConfigError, match=f"{key} must be true or false"):
        RuntimeSettings.from_dict({key: "yes"})


def test_bfloat16_on_cpu_autocasts_only_where_the_cpu_has_native_bf16(tiny_run, monkeypatch,
                                                                       caplog):
    texts = ["a fine day", "the worst service ever", "markets closed flat"]
    f32 = ModelRuntime.load(tiny_run)
    assert not f32.cpu_autocast and f32.describe()["compute"] is None
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    b16 = ModelRuntime.load(tiny_run, settings=RuntimeSettings(dtype="bfloat16"))
    assert b16.cpu_autocast and b16.describe()["compute"] == "bfloat16 autocast"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # else autocast is emulated
        assert (b16.probabilities(texts) - f32.probabilities(texts)).abs().max() < 2e-2
    # Linear weights rounded once at load answer exactly as autocast over float32 weights does
    dtypes = {type(m).__name__: m.weight.dtype for m in b16.model.modules() if hasattr(m, "weight")}
    assert dtypes["Linear"] == torch.bfloat16 and dtypes["Embedding"] == torch.float32
    f32.cpu_autocast = True
    assert torch.equal(b16.probabilities(texts), f32.probabilities(texts))
    f32.cpu_autocast = False
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        plain = ModelRuntime.load(tiny_run, settings=RuntimeSettings(dtype="bfloat16"))
    assert not plain.cpu_autocast and "no native bf16; serving in float32" in caplog.text
    assert (plain.probabilities(texts) - f32.probabilities(texts)).abs().max() < 1e-6
