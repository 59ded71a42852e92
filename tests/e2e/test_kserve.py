"""`trainer kserve-export`: the KServe storage layout, and its config starting a real TorchServe
that answers KServe v1 and v2 requests with the same archive (tiny model: the layout and the
envelopes are under test, not the weights). What needs a cluster (KServe's storage initializer,
its wrapper, Istio) is not run here."""

import json
import time
import zipfile

import pytest
import requests
import yaml

from trainer.__main__ import main
from trainer.common.config import SettingsError
from trainer.ops.server import TorchServe, read_properties
from trainer.packaging.archive import ArchiveSettings, build_archive
from trainer.packaging.kserve import KServeSettings, export

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def store(tiny_run, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    build_archive(tiny_run, "sentiment", "3", store, ArchiveSettings(max_chars=200),
                  allow_weak=True)
    return store


def test_layout_matches_the_torchserve_runtime(store, tmp_path, capsys):
    out = tmp_path / "kserve"
    assert main(["kserve-export", "--model-store", str(store), "--version", "3", "--out", str(out),
                 "--protocol", "v2", "--gpus", "2", "--workers", "2"]) == 0
    files = sorted(str(f.relative_to(out)) for f in out.rglob("*") if f.is_file())
    assert files == ["config/config.properties", "config/metrics.yaml", "inferenceservice.yaml",
                     "model-store/sentiment.v3.mar"]
    assert json.loads(capsys.readouterr().out)["files"] == files
    assert zipfile.ZipFile(out / "model-store/sentiment.v3.mar").testzip() is None
    props = read_properties(out / "config/config.properties")
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["service_envelope"] == "kservev2" and props["number_of_gpu"] == "2"
    assert props["management_address"].startswith("http://127.0.0.1")
    snapshot = json.loads(props["model_snapshot"])
    model = snapshot["models"]["sentiment"]["3"]
    assert model["marName"] == "sentiment.v3.mar" and model["defaultVersion"] is True
    assert model["minWorkers"] == model["maxWorkers"] == 4 and model["batchSize"] == 1
    isvc = yaml.safe_load((out / "inferenceservice.yaml").read_text())
    predictor = isvc["spec"]["predictor"]["model"]
    assert predictor["modelFormat"]["name"] == "pytorch" and predictor["protocolVersion"] == "v2"
    assert predictor["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_bad_inputs_write_nothing(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="sentiment.v9.mar"):
        export(store, "sentiment", "9", tmp_path / "a", KServeSettings())
    with pytest.raises(SettingsError, match="protocol must be v1 or v2"):
        export(store, "sentiment", "3", tmp_path / "b", KServeSettings(protocol="v3"))
    assert list(tmp_path.iterdir()) == []


def serve_export(out, workdir):
    """The exported config as is, but for what only a pod has: local paths and free ports."""
    return TorchServe(workdir, out / "model-store", out / "config/config.properties", ports="free",
                      overrides={"metrics_config": str(out / "config/metrics.yaml")})


def post_until_ready(url, body, timeout=120):
    deadline = time.time() + timeout
    while True:
        resp = requests.post(url, json=body, timeout=30)
        if resp.status_code != 404 and resp.status_code != 503 or time.time() > deadline:
            return resp
        time.sleep(0.5)  # the snapshot's worker is still loading


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_exported_config_serves_kserve_requests(store, tmp_path, protocol):
    out = export(store, "sentiment", "3", tmp_path / "kserve", KServeSettings(protocol=protocol))
    with serve_export(out, tmp_path / "ts") as ts:
        assert not ts.token_auth
        if protocol == "v1":
            resp = post_until_ready(f"{ts.inference_url}/v1/models/sentiment:predict",
                                    {"instances": [{"text": "I loved it"}, "plain text too",
                                                   {"text": ""}]})
            assert resp.status_code == 200, resp.text
            predictions = resp.json()["predictions"]
            assert [p.get("label") is not None for p in predictions] == [True, True, False]
            assert predictions[0]["version"] == "3" and "empty" in predictions[2]["error"]
        else:
            body = {"inputs": [{"name": "t0", "shape": [1], "datatype": "BYTES",
                                "data": ["I loved it"]}]}
            resp = post_until_ready(f"{ts.inference_url}/v2/models/sentiment/infer", body)
            assert resp.status_code == 200, resp.text
            output = resp.json()["outputs"][0]
            assert output["name"] == "t0"
            assert output["data"][0]["label"] in ("negative", "neutral", "positive")
