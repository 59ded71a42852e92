"""Tampering inside a built .mar: changed weights, tokenizer or config are refused at load, naming
the file, before anything is parsed; weights are never read through pickle (load or save).
(The e2e twin, tests/e2e/test_serve.py, shows a real worker refusing a changed config.json.)"""

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from handlers import runtime
from handlers.errors import IntegrityError
from handlers.manifest import write_manifest
from handlers.runtime import ModelRuntime
from handlers.stats import read_window
from trainer.model.rundir import load_run, save_run
from trainer.packaging.archive import ArchiveSettings, build_archive


@pytest.fixture(scope="module")
def extracted(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model dir a TorchServe worker gets: a real .mar built by the trainer, unzipped."""
    mar = build_archive(tiny_run, "tamper", "1", tmp_path_factory.mktemp("store"),
                        ArchiveSettings(), allow_weak=True)
    out = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(mar) as z:
        z.extractall(out)
    return out


def _flip_weight_byte(path: Path) -> None:
    """One byte inside the tensor data (past the header): still a valid safetensors file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rename_vocab_entry(path: Path) -> None:
    tok = json.loads(path.read_text())
    vocab = tok["model"]["vocab"]
    vocab["gr8"] = vocab.pop("good")
    path.write_text(json.dumps(tok))


def _swap_activation(path: Path) -> None:
    config = json.loads(path.read_text())
    config["hidden_act"] = "relu"
    path.write_text(json.dumps(config))


TAMPER = {"model.safetensors": _flip_weight_byte, "tokenizer.json": _rename_vocab_entry,
          "config.json": _swap_activation}


def test_the_untouched_archive_loads_and_predicts(extracted: Path) -> None:
    """The control: without tampering the same unzipped archive serves."""
    out = ModelRuntime.load(extracted).predict(["a fine day"])
    assert out[0]["label"] in ("negative", "neutral", "positive")


@pytest.mark.parametrize("name", TAMPER)
def test_tampered_file_is_refused_naming_it_before_anything_loads(
        extracted: Path, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(extracted, model_dir)
    TAMPER[name](model_dir / name)
    # The change is plausible: the file still parses, only the manifest can tell.
    if name.endswith(".json"):
        json.loads((model_dir / name).read_text())
    else:
        load_file(model_dir / name)

    def loaded_before_verification(*args: object, **kwargs: object) -> None:
        raise AssertionError("model files were read before the manifest was verified")

    monkeypatch.setattr(runtime.AutoTokenizer, "from_pretrained", loaded_before_verification)
    monkeypatch.setattr(runtime.AutoModelForSequenceClassification, "from_pretrained",
                        loaded_before_verification)
    with pytest.raises(IntegrityError, match=rf"^{name}: sha256 .* refusing to load"):
        ModelRuntime.load(model_dir)


@pytest.fixture
def pickle_only_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A run dir whose weights are a pickle (pytorch_model.bin) and whose manifest matches it,
    so nothing but the safetensors-only rule stands in the way."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    torch.save(load_file(run / "model.safetensors"), run / "pytorch_model.bin")
    (run / "model.safetensors").unlink()
    write_manifest(run)
    return run


@pytest.fixture
def no_unpickling(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and block) every attempt to unpickle."""
    calls: list[str] = []

    def refuse(name: str):
        def blocked(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise AssertionError(f"{name} called")
        return blocked

    monkeypatch.setattr(torch, "load", refuse("torch.load"))
    monkeypatch.setattr(pickle, "load", refuse("pickle.load"))
    monkeypatch.setattr(pickle, "loads", refuse("pickle.loads"))
    return calls


def test_pickle_weights_are_refused_by_the_handler_and_the_trainer(
        pickle_only_run: Path, no_unpickling: list[str]) -> None:
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        ModelRuntime.load(pickle_only_run)
    with pytest.raises(OSError, match="safetensors|model.safetensors"):
        load_run(pickle_only_run)  # what `trainer adapt --from` and `rollout` build on
    assert no_unpickling == []


def test_save_run_refuses_pickle_weights_and_leaves_nothing(tmp_path: Path) -> None:
    class PickleModel:
        def save_pretrained(self, directory: Path) -> None:
            torch.save({"w": torch.zeros(2)}, Path(directory) / "pytorch_model.bin")

    class Tokenizer:
        def save_pretrained(self, directory: Path) -> None:
            (Path(directory) / "tokenizer.json").write_text("{}")

    with pytest.raises(RuntimeError, match="refusing to write pickle weights"):
        save_run(tmp_path / "v1", PickleModel(), Tokenizer(), ["a", "b"], {})
    assert list(tmp_path.iterdir()) == []  # no run dir, no hidden leftovers


def test_stats_window_holding_a_pickle_is_skipped_not_unpickled(
        tmp_path: Path, no_unpickling: list[str]) -> None:
    path = tmp_path / "123.window.npz"
    np.savez(path, features=np.zeros((1, 1), np.float32), classes=np.zeros(1, np.int16),
             times=np.zeros(1), meta=np.array([{"names": ["x"], "seen": 1}], dtype=object))
    assert read_window(path) is None
    assert no_unpickling == []
