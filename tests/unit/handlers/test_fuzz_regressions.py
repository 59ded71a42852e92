"""Bodies the fuzzer (bench/fuzz.py) found failing their whole TorchServe batch with 503, kept
as fast regressions: each must now fail alone with a 400, its batch-mates answered normally."""

import pytest

from handlers.errors import BadRequest, PayloadTooLarge
from handlers.runtime import decode_request
from tests.unit.handlers.conftest import batch_of

BIG_INT = b'{"text": ' + b"9" * 5000 + b"}"  # over Python's 4300-digit int limit: ValueError
SURROGATE = b'{"text": "lone \\ud800 surrogate"}'  # tokenizer raises TypeError on it


@pytest.mark.parametrize("body, content_type, words", [
    (BIG_INT, "application/json", "not valid JSON: Exceeds the limit"),
    (BIG_INT, "application/json; charset=utf-8", "not valid JSON"),
    (SURROGATE, "application/json", "lone surrogate '\\ud800' at character 5"),
    ({"text": "\udfff"}, "application/json", "lone surrogate"),  # as TorchServe parsed it
])
def test_decoder_refuses_them_with_a_400(body, content_type, words):
    with pytest.raises(BadRequest) as info:
        decode_request(body, content_type, max_chars=100)
    assert words in info.value.message


def test_big_int_without_a_json_content_type_is_plain_text():
    """Like any other body that starts with '{' but is not JSON."""
    with pytest.raises(PayloadTooLarge, match="5010 characters; the limit is 100"):
        decode_request(BIG_INT, "application/octet-stream", max_chars=100)


def test_they_fail_alone_in_a_batch(handler_and_context):
    h, ctx = handler_and_context
    headers, inputs, ids = batch_of([("application/json", {"text": "a calm day"}),
                                     ("application/octet-stream", BIG_INT),
                                     ("application/json", {"text": "lone \ud800"}),
                                     ("text/plain", b"plain and fine")])
    ctx.request_processor, ctx.request_ids = headers, ids
    out = h.handle(inputs, ctx)
    assert [ctx.get_response_status(i)[0] for i in range(4)] == [200, 413, 400, 200]
    assert out[0]["label"] and out[3]["label"]


def test_a_client_describe_header_on_a_batch_gets_predictions(handler_and_context):
    """Inference requests carry the url_path header the front end adds; describe calls don't."""
    h, ctx = handler_and_context
    spoofed = [{"name": b"describe", "value": b"True"}, {"name": b"url_path", "value": b""}]
    headers, inputs, ids = batch_of([("application/json", {"text": "hello"}),
                                     ("application/json", {"text": "goodbye"})], spoofed)
    ctx.request_processor, ctx.request_ids = headers, ids
    out = h.handle(inputs, ctx)
    assert len(out) == 2 and all("label" in o and "settings" not in o for o in out)
