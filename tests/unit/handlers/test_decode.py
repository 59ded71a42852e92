"""Request decoding: every bad body is a 4xx HandlerError naming the problem; good ones pass."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.errors import BadRequest, HandlerError, PayloadTooLarge, UnsupportedMediaType
from handlers.runtime import decode_request


@pytest.mark.parametrize("body, content_type, text", [
    (b"great movie", "text/plain", "great movie"),
    ("  spaced  ", None, "spaced"),
    ({"text": "a dict body"}, "application/json", "a dict body"),
    (b'{"text": "json bytes"}', "application/json", "json bytes"),
    (b'{"text": "json without header"}', None, "json without header"),
    (b"{not json but plain text", "text/plain", "{not json but plain text"),
    (b"raw bytes", "application/octet-stream", "raw bytes"),
    (b'{"text": "a vendor json type"}', "application/vnd.api+json", "a vendor json type"),
    ("caf\u00e9 \u2764", None, "caf\u00e9 \u2764"),
])
def test_good_bodies(body, content_type, text):
    assert decode_request(body, content_type, max_chars=100) == text


@pytest.mark.parametrize("body, content_type, error, words", [
    (None, None, BadRequest, "empty"),
    (b"", "text/plain", BadRequest, "empty"),
    (b"   ", "text/plain", BadRequest, "empty"),
    (b"\xff\xfe bad", None, BadRequest, "UTF-8 (byte 0)"),
    (b"{broken", "application/json", BadRequest, "not valid JSON"),
    ({"txt": "x"}, "application/json", BadRequest, "field 'text'"),
    ({"text": 5}, "application/json", BadRequest, "must be a string, got int"),
    ({"text": ["a"]}, "application/json", BadRequest, "got list"),
    ([1, 2], "application/json", BadRequest, "got JSON list"),
    (b"[1, 2]", "application/json", BadRequest, "got JSON list"),
    ({"text": ""}, "application/json", BadRequest, "empty"),
    (b"x" * 101, "text/plain", PayloadTooLarge, "101 characters; the limit is 100"),
    (b"<text>hi</text>", "application/xml", UnsupportedMediaType,
     "Content-Type application/xml is not supported"),
    (b"\x89PNG", "image/png; q=1", UnsupportedMediaType, "image/png is not supported"),
])
def test_bad_bodies_name_the_problem(body, content_type, error, words):
    with pytest.raises(error) as info:
        decode_request(body, content_type, max_chars=100)
    assert 400 <= info.value.status < 500
    assert words in info.value.message


def test_deeply_nested_json_is_a_bad_request():
    body = ("[" * 100_000 + "]" * 100_000).encode()
    with pytest.raises(BadRequest):
        decode_request(body, "application/json", max_chars=100)


@given(st.binary(max_size=300), st.sampled_from([None, "application/json", "text/plain"]))
def test_any_bytes_give_text_or_a_4xx(body, content_type):
    try:
        text = decode_request(body, content_type, max_chars=200)
    except HandlerError as e:
        assert 400 <= e.status < 500 and e.message
    else:
        assert text and text == text.strip() and len(text) <= 200


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=10))
def test_any_json_value_gives_text_or_a_4xx(value):
    try:
        decode_request(json.dumps(value).encode(), "application/json", max_chars=200)
    except HandlerError as e:
        assert 400 <= e.status < 500


@pytest.mark.parametrize("body", [b"\x00", b"\x00\x00\x01\x1f", "\x07\x00"])
def test_control_characters_only_is_refused_like_an_empty_text(body):
    with pytest.raises(BadRequest, match="only control characters"):
        decode_request(body, "text/plain", 100)
