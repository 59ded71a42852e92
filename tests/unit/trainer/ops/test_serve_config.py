"""`serve start` finds the shipped TorchServe config from any directory of a checkout."""

from pathlib import Path

import pytest

from trainer.ops import serve

ROOT = Path(__file__).resolve().parents[4]


def test_a_local_config_wins_else_the_repositorys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert serve.shipped_config() == ROOT / "config.properties"
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:9\n")
    assert serve.shipped_config().resolve() == tmp_path / "config.properties"


def test_no_config_anywhere_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serve, "__file__", str(tmp_path / "a" / "b" / "serve.py"))
    with pytest.raises(FileNotFoundError, match="pass --config FILE"):
        serve.shipped_config()
