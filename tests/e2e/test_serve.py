"""End to end: the real TorchServe serves the trainer's real MiniLM archive, safely."""

import json
import zipfile
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from trainer.ops.client import ClientError

pytestmark = pytest.mark.e2e

BAD_REQUESTS = [  # (body, content type, status, words in the message)
    (b"", "text/plain", 400, "empty"),
    (b"\xff\xfe\xfd", "text/plain", 400, "not valid UTF-8"),
    (b'{"text": "unterminated', "application/json", 400, "not valid JSON"),
    (b'{"txt": "wrong field"}', "application/json", 400, "must have field 'text'"),
    (b'{"text": 42}', "application/json", 400, "must be a string, got int"),
    (b'["a", "list"]', "application/json", 400, "got JSON list"),
    (b'{"text": "   "}', "application/json", 400, "empty"),
    (b"x" * 501, "text/plain", 413, "501 characters; the limit is 500"),
    # curl -d without a Content-Type: TorchServe splits the form into fields
    (b"what a lovely day", "application/x-www-form-urlencoded", 415,
     "send -H 'Content-Type: text/plain' --data-binary"),
    (b"text=what+a+lovely+day", "application/x-www-form-urlencoded", 415, "form-encoded body"),
    (b"<text>what a lovely day</text>", "application/xml", 415,
     "Content-Type application/xml is not supported"),
]


def post(client, body, content_type):
    return client.request("inference", "POST", "/predictions/sentiment", data=body,
                          headers={"Content-Type": content_type})


def worker_state(client):
    workers = client.describe("sentiment")[0]["workers"]
    return [(w["pid"], w["status"]) for w in workers]


def test_predict_json_and_plain_text(client):
    out = client.predict("sentiment", "An utterly wonderful, joyful day.")
    assert out["label"] in ("negative", "neutral", "positive")
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-3
    assert (out["model"], out["version"]) == ("sentiment", "1")
    plain = post(client, b"An utterly wonderful, joyful day.", "text/plain")
    assert plain.status_code == 200 and plain.json() == out
    assert client.predict("sentiment", "x", version="1")["version"] == "1"


@pytest.mark.parametrize("body, content_type, status, words", BAD_REQUESTS)
def test_each_bad_request_fails_alone_with_a_clear_4xx(client, body, content_type, status,
                                                       words):
    before = worker_state(client)
    resp = post(client, body, content_type)
    assert resp.status_code == status
    assert words in resp.json()["error"]
    assert worker_state(client) == before  # same worker pid, still READY
    assert client.predict("sentiment", "still serving")["label"]


def test_body_over_max_request_size_is_refused_by_the_front_end(client):
    before = worker_state(client)
    resp = post(client, b"y" * 2_000_000, "text/plain")
    assert resp.status_code == 413
    assert worker_state(client) == before


def test_good_requests_batched_with_bad_ones_all_answer_correctly(client):
    texts = [f"Review number {i}: {'great' if i % 2 else 'terrible'} service." for i in range(24)]
    expected = {t: client.predict("sentiment", t)["label"] for t in texts}
    jobs = [(t.encode(), "text/plain", 200, t) for t in texts]
    jobs += [(b, ct, s, None) for b, ct, s, _ in BAD_REQUESTS] * 3
    jobs.sort(key=lambda j: hash(j[0]) % 97)  # interleave good and bad

    def send(job):
        body, ct, _, _ = job
        return post(client, body, ct)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, jobs))
    for (body, _, status, text), resp in zip(jobs, responses):
        assert resp.status_code == status, (body[:40], resp.text)
        if text is not None:
            assert resp.json()["label"] == expected[text]
        else:
            assert resp.json()["error"]


def test_unauthenticated_and_wrong_key_calls_are_refused(server, client):
    urls = [("POST", f"{server.inference_url}/predictions/sentiment"),
            ("GET", f"{server.inference_url}/ping"),
            ("GET", f"{server.management_url}/models"),
            ("GET", f"{server.management_url}/models/sentiment?customized=true")]
    for method, url in urls:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            resp = requests.request(method, url, data=b"hello", headers=headers, timeout=30)
            assert resp.status_code == 400, url
            assert "Token Authorization failed" in resp.json()["message"]
    keys = json.loads(server.key_file.read_text())
    inference_key = {"Authorization": f"Bearer {keys['inference']['key']}"}
    resp = requests.get(f"{server.management_url}/models", headers=inference_key, timeout=30)
    assert resp.status_code == 400  # the inference key does not open the management API


def test_addresses_are_loopback(server):
    for url in (server.inference_url, server.management_url, server.metrics_url):
        assert url.startswith("http://127.0.0.1:")


def test_remote_and_out_of_store_archives_are_refused(client):
    for url in ("http://127.0.0.1:9/evil.mar", "file:///etc/passwd", "../x.mar"):
        with pytest.raises(ClientError) as info:
            client.register(url, "evil")
        assert info.value.status in (400, 404)
    assert all(m["modelName"] != "evil" for m in client.models()["models"])


def test_describe_customized_returns_runtime_metadata(client):
    described = client.describe("sentiment", customized=True)[0]
    meta = described["customizedMetadata"]
    if isinstance(meta, str):
        meta = json.loads(meta)
    assert meta["labels"] == ["negative", "neutral", "positive"]
    assert meta["device"] == "cpu" and meta["version"] == "1"


def test_unknown_model_is_404(client):
    with pytest.raises(ClientError) as info:
        client.predict("no-such-model", "hi")
    assert info.value.status == 404


def test_tampered_archive_is_refused_at_load(server, client, model_store):
    """Change config.json inside the built .mar: the worker refuses it, naming the file."""
    src = model_store / "sentiment.v1.mar"
    bad = model_store / "tampered.v1.mar"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                data = data.replace(b'"hidden_act"', b'"hidden_act_x"', 1)
                data = data.replace(b'"gelu"', b'"relu"', 1)
            zout.writestr(item, data)
    try:
        with pytest.raises(ClientError):
            client.register(bad.name, "tampered")
        log = server.log_path.read_text(errors="replace")
        assert "config.json: sha256" in log and "refusing to load" in log
        names = [m["modelName"] for m in client.models()["models"]]
        assert "tampered" not in names or not _ready(client, "tampered")
    finally:
        try:
            client.unregister("tampered")
        except ClientError:
            pass
        bad.unlink(missing_ok=True)
    assert client.predict("sentiment", "the good model still serves")["label"]


def _ready(client, name):
    return any(w["status"] == "READY" for w in client.describe(name)[0]["workers"])

