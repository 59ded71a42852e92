"""Shared fixtures: a tiny random BERT for fast unit tests, and small run dirs built from it."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def stats_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Workers' statistics of this test session only (never a shared /tmp directory)."""
    path = tmp_path_factory.mktemp("stats")
    os.environ["DRIFTSERVE_STATS_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BERT that uses MiniLM's real tokenizer (so real text works)."""
    from tests.models import tiny_base as build

    return build(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_settings(tiny_base: Path):
    from trainer.learning.train import TrainSettings

    return TrainSettings(base_model=str(tiny_base), epochs=1, min_steps=0, patience=0, batch_size=16,
                         max_train=64,
                         max_length=32)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_settings) -> Path:
    """A real (tiny) train run on real nyt data: LoRA, merge, run dir with manifest."""
    from trainer.learning.train import run_train

    out = tmp_path_factory.mktemp("runs") / "v1"
    run_train(tiny_settings, "nyt", out)
    return out


@pytest.fixture(scope="session")
def routed_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v2 adapted from tiny_run on movie with the default routing: v1 answers what the router
    takes for nyt, v2's own weights the rest."""
    from trainer.learning.adapt import AdaptSettings, run_adapt

    out = tmp_path_factory.mktemp("routed") / "v2"
    run_adapt(AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32,
                            max_train=64, max_eval=40, memory=30), tiny_run, "movie", out)
    return out


@pytest.fixture(scope="session")
def onnx_mar(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tiny_run archived by the CLI with `--engine onnxruntime` and signed: the .mar, its key,
    and the archive unzipped as a TorchServe worker gets it."""
    import zipfile

    from handlers.signing import generate_keypair
    from trainer.__main__ import main

    root = tmp_path_factory.mktemp("onnx")
    private, public, kid = generate_keypair()
    (root / "archive.key").write_bytes(private)
    (root / "archive.pub").write_bytes(public)
    assert main(["archive", "--run", str(tiny_run), "--model-store", str(root / "store"),
                 "--allow-weak", "--engine", "onnxruntime", "--sign-key",
                 str(root / "archive.key")]) == 0
    mar = root / "store" / "sentiment.v1.mar"
    with zipfile.ZipFile(mar) as z:
        z.extractall(root / "unzipped")
    return {"mar": mar, "public": root / "archive.pub", "key_id": kid, "dir": root / "unzipped"}
