"""Fuzzing the real TorchServe: generated bad bodies mixed with good ones in shared batches never
kill or restart a worker, each bad one gets its own 4xx with a message, each good one the label a
sequential call gives. FUZZ_N bodies here (default 300); bench/fuzz.py runs 10,000."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import fuzz

pytestmark = pytest.mark.e2e
MODEL = "sentiment"  # registered by the session `client` fixture, max_chars=500
FUZZ_N = int(os.environ.get("FUZZ_N", "300"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))
HYPOTHESIS_N = int(os.environ.get("FUZZ_HYPOTHESIS_N", "40"))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return fuzz.good_texts()


def test_fuzzed_bodies_in_shared_batches_fail_alone_and_kill_no_worker(server, client, texts):
    limit = int(server.props["max_request_size"])
    cases = fuzz.generate(FUZZ_N, FUZZ_SEED, texts, fuzz.control_texts(texts), fuzz.MAX_CHARS,
                          limit)
    result = fuzz.run_fuzz(server, client, MODEL, cases, threads=16)
    assert result["failure_count"] == 0, json.dumps(result["failures"][:5], indent=1)
    assert set(result["by_kind"]) >= {*fuzz.BAD_KINDS, "over_max_request_size", "good_json",
                                      "good_plain", "good_control_chars"}
    before, after = result["workers_before"], result["workers_after"]
    assert before["described"] and before["processes"]
    assert after == before  # same worker pids, same processes: nothing died or restarted
    assert result["all_ready"]
    assert result["death_log_lines"] == []


def test_hypothesis_bodies_get_an_answer_never_a_5xx(server, client):
    """Property-based, one request at a time: any bytes, text or JSON value under any content
    type is answered 200 with a label or 4xx with a JSON error, and the worker survives."""
    before = fuzz.workers(client, server, MODEL)
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["text", "txt", "a"]), inner, max_size=3), max_leaves=8)
    bodies = st.one_of(st.binary(max_size=700), st.text(max_size=700).map(str.encode),
                       json_values.map(lambda v: json.dumps(v).encode()))

    @settings(max_examples=HYPOTHESIS_N, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies, content_type=st.sampled_from(
        ["application/json", "text/plain", "application/octet-stream", None]))
    def one(body: bytes, content_type: str | None) -> None:
        case = fuzz.Case("hypothesis", body, content_type, 0)
        status, content = fuzz.send(client, MODEL, case)
        answer = json.loads(content)
        if status == 200:
            assert answer["label"] in ("negative", "neutral", "positive")
        else:
            assert status in (400, 413), (status, content[:200])
            assert answer["error"] and answer["status"] == status

    one()
    assert fuzz.workers(client, server, MODEL) == before
