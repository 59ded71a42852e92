"""The TorchServe adapter, driven through TorchServe's own Context and request unpacking."""

import re
from pathlib import Path

from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handlers.bins import BINS
from handlers.torchserve_handler import SentimentHandler
from tests.unit.handlers.conftest import batch_of, make_context

ROOT = Path(__file__).resolve().parents[3]


def run(handler, ctx, bodies):
    headers, inputs, ids = batch_of(bodies)
    ctx.request_processor = headers
    ctx.request_ids = ids
    return handler.handle(inputs, ctx)


def test_mixed_batch_fails_only_the_bad_requests(handler_and_context):
    handler, ctx = handler_and_context
    bodies = [
        ("application/json", {"text": "what a lovely day"}),
        ("text/plain", b"\xff\xfe"),
        ("text/plain", b"plain text works too"),
        ("application/json", b"{oops"),
        ("application/json", {"text": "x" * 51}),
        ("application/json", {"text": 3}),
        ("text/plain", b""),
    ]
    out = run(handler, ctx, bodies)
    assert len(out) == len(bodies)
    statuses = [ctx.get_response_status(i)[0] for i in range(len(bodies))]
    assert statuses == [200, 400, 200, 400, 413, 400, 400]
    for i in (0, 2):
        assert out[i]["label"] in ("negative", "neutral", "positive")
        assert (out[i]["model"], out[i]["version"]) == ("sentiment", "2")
    assert "UTF-8" in out[1]["error"] and "not valid JSON" in out[3]["error"]
    assert "limit is 50" in out[4]["error"] and "empty" in out[6]["error"]
    assert ctx.get_response_status(1)[1] == out[1]["error"]


def test_describe_returns_a_dict(handler_and_context):
    handler, ctx = handler_and_context
    headers, inputs, ids = batch_of([("application/json", {})],
                                     headers=[{"name": b"describe", "value": b"True"}])
    ctx.request_processor = headers
    out = handler.handle(inputs, ctx)
    assert out[0]["model"] == "sentiment" and out[0]["labels"][0] == "negative"


def test_feature_bins_are_exported_by_the_monitor_not_per_request(tiny_run, caplog):
    """TorchServe's own metrics cache with the shipped metrics.yaml: every DriftFeatureBin series
    is declared at zero at load; a request emits its per-request series but no bin lines; the
    monitor's export (run by its thread about once a second) emits the counts of all of them."""
    metrics = MetricsCacheYamlImpl(str(ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    ctx = make_context(tiny_run, {"handler": {"persist_every_s": 3600}})  # no tick in the test
    ctx.metrics = metrics
    handler = SentimentHandler()
    with caplog.at_level("INFO"):
        handler.initialize(ctx)
        names = handler.runtime.monitor.reference.names
        declared = bin_lines(caplog)
        assert len(declared) == len(names) * BINS and {v for _, v in declared} == {0}
        caplog.clear()
        texts = ["what a lovely day", "the worst service", "markets closed flat", "ok"]
        run(handler, ctx, [("text/plain", t.encode()) for t in texts])
        assert "[METRICS]DriftRequests" in caplog.text and not bin_lines(caplog)
        handler.runtime.monitor.export()
    per_feature: dict[str, int] = {}
    for feature, value in bin_lines(caplog):
        per_feature[feature] = per_feature.get(feature, 0) + value
    assert per_feature == {name: len(texts) for name in names}
    handler.runtime.monitor.close()


def bin_lines(caplog) -> list[tuple[str, int]]:
    """(feature, count) of each DriftFeatureBin line TorchServe's metrics logger wrote."""
    found = re.findall(r"\[METRICS\]DriftFeatureBin\.Count:(\d+)\|#[^|]*Feature:([^,|]+)",
                       caplog.text)
    return [(feature, int(value)) for value, feature in found]
