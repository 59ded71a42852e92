"""What the running server exposes, beyond tests/e2e/test_serve.py's key checks: the metrics port
carries only the declared metrics (no request text, no model API), every socket the server
listens on is loopback, state-changing management calls need the key, a client's `describe`
header gets no metadata, and a second server on free ports starts beside the first."""

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from trainer.ops.client import TorchServeClient
from trainer.ops.server import TorchServe, read_properties

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "sentiment"
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def declared_metrics() -> dict[str, set[str]]:
    """metric name -> its dimensions, as declared in the shipped metrics.yaml."""
    raw = yaml.safe_load((ROOT / "metrics.yaml").read_text())
    out: dict[str, set[str]] = {}
    for section in ("ts_metrics", "model_metrics"):
        for metrics in (raw.get(section) or {}).values():
            for m in metrics:
                out[m["name"]] = set(m.get("dimensions") or [])
    return out


def listening(server: TorchServe) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket of the server's process group."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == server.proc.pid:  # started with start_new_session
                found += [(c.laddr.ip, c.laddr.port) for c in proc.net_connections("tcp")
                          if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return found


def test_metrics_port_carries_only_declared_metrics_and_no_request_data(server, client):
    marker = "Zebra quartz marmalade 7f3a9c, a sentence that must never reach the metrics port"
    client.predict(MODEL, marker)
    declared = declared_metrics()
    deadline, text = time.time() + 30, ""
    while time.time() < deadline:  # the handler's metrics reach the front end asynchronously
        text = requests.get(f"{server.metrics_url}/metrics", timeout=30).text
        if re.search(rf'^DriftRequests\{{ModelName="{MODEL}"', text, re.M):
            break
        time.sleep(0.5)
    assert re.search(rf'^DriftRequests\{{ModelName="{MODEL}"', text, re.M), text[:2000]
    for word in ("Zebra", "marmalade", "7f3a9c", "probabilities", '"text"'):
        assert word not in text
    for line in text.splitlines():
        if not line or line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        sample = SAMPLE.match(line)
        assert sample, f"not a Prometheus sample: {line!r}"
        name = re.sub(r"_(bucket|count|sum)$", "", sample["name"])
        assert name in declared, f"undeclared metric {name!r}"
        keys = {kv.split("=", 1)[0] for kv in (sample["labels"] or "").split(",") if kv}
        # the back end adds Hostname to every model metric (see metrics.yaml)
        assert keys <= declared[name] | {"le", "Hostname"}, line
        float(sample["value"])


def test_metrics_port_serves_no_model_api(server):
    for method, path in (("GET", "/models"), ("GET", f"/models/{MODEL}"), ("GET", "/ping"),
                         ("GET", f"/predictions/{MODEL}"), ("POST", f"/predictions/{MODEL}")):
        resp = requests.request(method, server.metrics_url + path, data=b"hi", timeout=30)
        assert resp.status_code == 404, (method, path, resp.status_code)
    description = requests.get(f"{server.metrics_url}/api-description", timeout=30).text
    assert set(json.loads(description)["paths"]) == {"/metrics"}


def test_every_listening_socket_is_loopback(server):
    sockets = listening(server)
    ports = {port for _, port in sockets}
    for url in (server.inference_url, server.management_url, server.metrics_url):
        assert int(url.rsplit(":", 1)[1]) in ports  # we found the server's own sockets
    assert len(sockets) >= 5  # inference, management, metrics + two gRPC
    assert {ip for ip, _ in sockets} <= LOOPBACK, sockets


def test_shipped_config_binds_loopback_and_keeps_token_auth():
    props = read_properties(ROOT / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.fullmatch(r"https?://127\.0\.0\.1:\d+", props[key]), (key, props[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert props.get(key, "127.0.0.1") in LOOPBACK  # TorchServe's default is loopback
    assert props.get("disable_token_authorization", "false").lower() == "false"
    assert props.get("enable_envvars_config", "false").lower() == "false"  # no env override
    assert props["allowed_urls"] == "^model-store-files-only$"


def test_state_changing_management_calls_need_the_key(server, client):
    before = client.describe(MODEL)[0]
    calls = [("POST", f"/models?url={MODEL}.v1.mar&model_name=intruder&synchronous=true"),
             ("PUT", f"/models/{MODEL}?min_worker=3&synchronous=true"),
             ("PUT", f"/models/{MODEL}/1/set-default"),
             ("DELETE", f"/models/{MODEL}/1")]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            resp = requests.request(method, server.management_url + path, headers=headers,
                                    timeout=60)
            assert resp.status_code == 400, (method, path)
            assert "Token Authorization failed" in resp.json()["message"]
    after = client.describe(MODEL)[0]
    assert [w["pid"] for w in after["workers"]] == [w["pid"] for w in before["workers"]]
    assert all(m["modelName"] != "intruder" for m in client.models()["models"])


def test_describe_header_on_predictions_gets_no_metadata_and_breaks_no_batch(client):
    """TorchServe passes client headers to the handler; its own describe call is the only one
    that may return the model's metadata and statistics."""
    texts = [f"Visit {i}: the staff were {'kind' if i % 2 else 'rude'}." for i in range(16)]
    expected = {t: client.predict(MODEL, t)["label"] for t in texts}

    def send(i: int) -> requests.Response:
        headers = {"describe": "True"} if i % 2 == 0 else {}
        return client.request("inference", "POST", f"/predictions/{MODEL}",
                              json={"text": texts[i]}, headers=headers)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, range(len(texts))))
    for text, resp in zip(texts, answers):
        assert resp.status_code == 200, resp.text[:300]
        body = resp.json()
        assert body["label"] == expected[text] and "settings" not in body and "stats" not in body
    bare = client.request("inference", "GET", f"/predictions/{MODEL}", headers={"describe": "True"})
    assert bare.status_code == 400 and "settings" not in bare.text
    meta = client.describe(MODEL, customized=True)[0]["customizedMetadata"]
    assert "settings" in (json.loads(meta) if isinstance(meta, str) else meta)


def test_a_second_server_on_free_ports_starts_beside_the_first(server, tmp_path):
    """Free ports include TorchServe's gRPC ports: it exits when 7070/7071 are taken."""
    store = tmp_path / "store"
    store.mkdir()
    second = TorchServe(tmp_path / "ts", store, ROOT / "config.properties", ports="free")
    try:
        second.start()
        assert TorchServeClient(second.inference_url, second.management_url,
                                second.key_file).ping()["status"] == "Healthy"
        assert {ip for ip, _ in listening(second)} <= LOOPBACK
    finally:
        second.stop()
