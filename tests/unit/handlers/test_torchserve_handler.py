"""The TorchServe adapter, driven through TorchServe's own Context and request unpacking."""

from tests.unit.handlers.conftest import batch_of


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
