"""A real TorchServe (shipped config.properties, token auth on, free loopback ports) serving a
real MiniLM LoRA-merged .mar built by the trainer. Always stopped by the fixture finalizer."""

from pathlib import Path

import pytest

from trainer.learning.train import TrainSettings, run_train
from trainer.ops.client import TorchServeClient
from trainer.ops.server import TorchServe
from trainer.packaging.archive import ArchiveSettings, build_archive

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory) -> Path:
    """Real MiniLM weights and real nyt data; small and short so the suite stays quick. A few
    steps make a weak model (the guard says so): these tests check serving, not accuracy, so
    its archives are built with allow_weak. 300 validation texts make its drift reference."""
    out = tmp_path_factory.mktemp("e2e-runs") / "v1"
    settings = TrainSettings(epochs=1, min_steps=0, patience=0, lr_warmup=0.0, balance=False,
                             max_train=256, max_eval=300, reference_per_domain=300,
                             max_length=64, batch_size=32, lr=2e-3)
    run_train(settings, "nyt", out)
    return out


@pytest.fixture(scope="session")
def model_store(tmp_path_factory, minilm_run) -> Path:
    store = tmp_path_factory.mktemp("model_store")
    build_archive(minilm_run, "sentiment", "1", store, ArchiveSettings(max_chars=500),
                  allow_weak=True)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory, model_store):
    ts = TorchServe(tmp_path_factory.mktemp("ts-work"), model_store, ROOT / "config.properties",
                    ports="free")
    ts.start()
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def client(server) -> TorchServeClient:
    c = TorchServeClient(server.inference_url, server.management_url, server.key_file)
    c.register("sentiment.v1.mar", "sentiment", workers=1)
    return c
