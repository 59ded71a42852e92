"""Archive: a real torch-model-archiver .mar with handler, package, config; atomic; verified."""

import shutil
import zipfile

import pytest
import yaml

from handlers.errors import IntegrityError
from handlers.manifest import MANIFEST_NAME
from trainer.common.errors import SettingsError
from trainer.packaging import archive
from trainer.packaging.archive import ArchiveSettings, build_archive


@pytest.fixture(scope="module")
def built(tiny_run, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    mar = build_archive(tiny_run, "sentiment", "1", store, ArchiveSettings(batch_size=4),
                        allow_weak=True)
    return mar, store


def test_archive_contents(built, tiny_run):
    mar, store = built
    assert mar == store / "sentiment.v1.mar"
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = yaml.safe_load(z.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(z.read("model-config.yaml"))
        assert z.read(MANIFEST_NAME) == (tiny_run / MANIFEST_NAME).read_bytes()
    assert {"torchserve_handler.py", "handlers/runtime.py", "handlers/manifest.py",
            "model.safetensors", "tokenizer.json", "labels.json", "model-config.yaml"} <= names
    assert "handlers/torchserve_handler.py" not in names  # one handler class, at the root
    assert manifest["model"] == {"modelName": "sentiment", "handler": "torchserve_handler.py",
                                 "modelVersion": "1", "configFile": "model-config.yaml"}
    assert config["batchSize"] == 4 and config["deviceType"] == "gpu"
    assert {"maxBatchDelay", "minWorkers", "maxWorkers", "responseTimeout"} <= set(config)
    assert config["handler"]["max_chars"] == 2000
    assert [p.name for p in store.iterdir()] == ["sentiment.v1.mar"]


def test_reuse_keeps_identical_archive(built, tiny_run):
    mar, store = built
    before = mar.stat().st_mtime_ns
    build_archive(tiny_run, "sentiment", "1", store, ArchiveSettings(batch_size=4), reuse=True,
                  allow_weak=True)
    assert mar.stat().st_mtime_ns == before
    build_archive(tiny_run, "sentiment", "1", store, ArchiveSettings(batch_size=2), reuse=True,
                  allow_weak=True)
    assert mar.stat().st_mtime_ns != before


def test_tampered_run_dir_is_not_archived(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "config.json").write_text("{}")
    store = tmp_path / "store"
    with pytest.raises(IntegrityError, match="config.json"):
        build_archive(run, "sentiment", "1", store, ArchiveSettings(), allow_weak=True)
    assert not store.exists() or not any(store.iterdir())


def test_archiver_failure_leaves_no_partial_mar(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "HANDLER_FILE", "missing_handler.py")
    with pytest.raises(RuntimeError, match="torch-model-archiver failed"):
        build_archive(tiny_run, "sentiment", "1", tmp_path, ArchiveSettings(), allow_weak=True)
    assert list(tmp_path.iterdir()) == []


def test_bad_names_and_settings(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="model name"):
        build_archive(tiny_run, "../evil", "1", tmp_path, ArchiveSettings(), allow_weak=True)
    with pytest.raises(ValueError, match="version"):
        build_archive(tiny_run, "ok", "1;rm", tmp_path, ArchiveSettings(), allow_weak=True)
    with pytest.raises(SettingsError) as info:
        ArchiveSettings(batch_size=0, device_type="tpu", min_workers=2, max_workers=1).validate()
    for field in ("batch_size", "device_type", "max_workers"):
        assert field in str(info.value)


def test_device_ids_reach_model_config_and_are_checked():
    assert "deviceIds" not in ArchiveSettings().model_config()
    settings = ArchiveSettings(device_ids="0,2", min_workers=4, max_workers=4)
    settings.validate()
    assert settings.model_config()["deviceIds"] == [0, 2]
    with pytest.raises(SettingsError, match="device_ids must be GPU numbers"):
        ArchiveSettings(device_ids="0,gpu1").validate()


def test_drift_and_window_settings_from_the_cli_reach_the_handler(tiny_run, tmp_path, capsys):
    from handlers.runtime import RuntimeSettings
    from trainer.__main__ import main

    store = tmp_path / "store"
    args = ["archive", "--run", str(tiny_run), "--model-store", str(store), "--allow-weak"]
    assert main([*args, "--window", "500", "--drift-ert", "50000", "--drift-check-every", "10",
                 "--drift-min-window", "200", "--drift-correction", "bonferroni"]) == 0
    with zipfile.ZipFile(store / "sentiment.v1.mar") as z:
        handler = yaml.safe_load(z.read("model-config.yaml"))["handler"]
    settings = RuntimeSettings.from_dict(handler)  # what the worker reads
    assert (settings.window, settings.drift_ert, settings.drift_check_every,
            settings.drift_min_window, settings.drift_correction) == (500, 50000, 10, 200,
                                                                      "bonferroni")
    capsys.readouterr()
    assert main([*args, "--version", "2", "--drift-ert", "0", "--window", "0"]) == 2
    err = capsys.readouterr().err
    assert "window must be a positive integer, got 0" in err
    assert "ert must be a positive integer, got 0" in err
    assert not (store / "sentiment.v2.mar").exists()
