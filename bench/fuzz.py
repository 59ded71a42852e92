"""Fuzz the real TorchServe with generated bad request bodies mixed with good ones.

    .venv/bin/python bench/fuzz.py                 # 10,000 bodies -> bench/results/fuzz.json
    .venv/bin/python bench/fuzz.py --n 500 --seed 3 --out /tmp/fuzz.json

Bad bodies: random bytes, invalid UTF-8, text over the handler's max_chars, bodies over the
front end's max_request_size, deeply nested and wrong-typed JSON, empty and whitespace-only
bodies, control characters. They are sent from many threads at once together with good requests,
so both share TorchServe batches. Passing means: no worker died or restarted (pids and READY
status from describe, the server's worker processes, no death in the log), every bad body got a
4xx with a JSON `error` (an empty 413 only from the front end, for bodies over max_request_size),
and every good one got 200 with the label a sequential call gave for the same text.
tests/e2e/test_fuzz.py runs the same code with a small count on the test session's server.
"""

import argparse
import json
import os
import platform
import random
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from trainer.common.artifacts import atomic_write_json  # noqa: E402
from trainer.common.errors import ClientError  # noqa: E402
from trainer.data.sources import DOMAINS, load_vader  # noqa: E402
from trainer.ops.client import TorchServeClient  # noqa: E402
from trainer.ops.server import TorchServe  # noqa: E402

MAX_CHARS = 500  # the handler limit of the archives fuzzed here (tests/e2e/conftest.py too)
# Log lines that mean a worker died, restarted, or a whole batch failed instead of one request.
DEATH_SIGNS = ("Backend worker process died", "Worker disconnected", "Invoking custom service failed",
               "Number of batch response mismatched", "WORKER_STOPPED", "Load model failed")
BAD_UTF8 = [b"\xc3", b"\xe2\x82", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80",
            b"\xf4\x90\x80\x80", b"\xfe", b"\xff\xfe"]
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u2028\u3000"
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0e, 0x1c), 0x7f)]  # not whitespace
JSON_FORBIDDEN = [chr(c) for c in range(0x20)]  # raw in a JSON string: invalid (RFC 8259)
JSON = "application/json"


@dataclass
class Case:
    """One request: what is sent and what the answer must be."""

    kind: str
    body: bytes
    content_type: str | None
    status: int  # expected HTTP status
    text: str | None = None  # good cases: the text whose reference label must come back
    words: str = ""  # bad cases: words the error message must contain


def good_texts(n: int = 40, max_chars: int = MAX_CHARS) -> list[str]:
    """Real sentences of every built-in domain: they start with a letter (never '{') and hold
    no quote or backslash, so the generators can splice them into JSON by hand."""
    per = -(-n // len(DOMAINS))
    out = []
    for domain in DOMAINS:
        picked = [t for ex in load_vader(domain) if (t := ex.text.strip())
                  and 10 < len(t) <= max_chars and t[0].isalnum() and not {'"', "\\"} & set(t)]
        out += picked[:per]
    return out[:n]


def control_texts(texts: list[str], seed: int = 0) -> list[str]:
    """Good texts with control characters inside: still text, must be answered 200."""
    rng = random.Random(seed)
    out = []
    for text in texts[:12]:
        cut = rng.randrange(1, len(text))
        out.append(text[:cut] + "".join(rng.choices(CONTROL, k=rng.randint(1, 4))) + text[cut:])
    out.append("\x1b[31m" + texts[0] + "\x1b[0m")  # ANSI colour codes
    return out


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _good(rng: random.Random, texts: list[str], controls: list[str]) -> Case:
    text = rng.choice(texts)
    form = rng.randrange(5)
    if form == 0:
        return Case("good_json", _json({"text": text}), JSON, 200, text)
    if form == 1:
        return Case("good_plain", text.encode(), rng.choice(["text/plain", None]), 200, text)
    if form == 2:
        return Case("good_extra_fields", _json({"text": text, "id": rng.randrange(1 << 30),
                                                "meta": {"x": [1, 2]}}), JSON, 200, text)
    if form == 3:
        pad = "".join(rng.choices(" \t\n", k=rng.randint(1, 6)))
        return Case("good_padded", (pad + text + pad).encode(), "text/plain", 200, text)
    text = rng.choice(controls)
    if rng.random() < 0.5:
        return Case("good_control_chars", _json({"text": text}), JSON, 200, text)
    return Case("good_control_chars", text.encode(), "text/plain", 200, text)


def _random_bytes(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    body = bytearray(rng.randbytes(rng.randint(1, 3 * max_chars)))
    body.insert(rng.randrange(len(body) + 1), 0xFF)  # never valid UTF-8
    ct = rng.choice(["text/plain", JSON, "application/octet-stream", None])
    return Case("random_bytes", bytes(body), ct, 400, words="UTF-8")


def _invalid_utf8(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    text = rng.choice(texts).encode()
    cut = rng.randrange(len(text) + 1)
    body = text[:cut] + rng.choice(BAD_UTF8) + text[cut:]
    if rng.random() < 0.4:
        body = b'{"text": "' + body + b'"}'
    return Case("invalid_utf8", body, rng.choice(["text/plain", JSON, None]), 400, words="UTF-8")


def _over_max_chars(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    size = rng.randint(max_chars + 1, 8 * max_chars)
    alphabet = rng.choice(["abcdefghij klmnop", "é€中😀 x", "".join(texts[:3])])
    text = "".join(rng.choices(alphabet, k=size))
    text = "x" + text[1:-1] + "y"  # never shortened by strip()
    if rng.random() < 0.5:
        return Case("over_max_chars", _json({"text": text}), JSON, 413,
                    words=f"the limit is {max_chars}")
    return Case("over_max_chars", text.encode(), "text/plain", 413,
                words=f"the limit is {max_chars}")


def _deep_json(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    depth = int(10 ** rng.uniform(1.5, 5))  # 30 .. 100,000 levels
    shape = rng.randrange(4)
    if shape == 0:
        body = "[" * depth + "]" * depth
    elif shape == 1:
        body = '{"a": ' * depth + "1" + "}" * depth
    elif shape == 2:
        body = '{"text": ' + "[" * depth + '"deep"' + "]" * depth + "}"
    else:
        body = '{"text": ' + '{"text": ' * depth + '"deep"' + "}" * (depth + 1)
    return Case("deep_json", body.encode(), JSON, 400)


def _wrong_type(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    text = rng.choice(texts)
    choices: list[bytes] = [
        b"42", b"-1.5e308", b"true", b"false", b"null", b"[]", b"{}", _json([text]),
        _json({"Text": text}), _json({"txt": text}), _json({"text": None}),
        _json({"text": 7}), _json({"text": 2.5}), _json({"text": True}), _json({"text": [text]}),
        _json({"text": {"text": text}}), b'{"text": NaN}', b'{"text": Infinity}',
        b'{"text": "' + text.encode() + b'", "text": 3}',  # duplicate key: the last one wins
        b'{"text": ' + b"9" * rng.randint(4301, 20000) + b"}",  # int over Python's digit limit
        b'{"text": "' + text.encode() + b'"',  # unterminated
        b'{"text": "lone surrogate \\ud800 in JSON"}',  # not encodable as UTF-8
        b'{"text": "\\udfff"}',
    ]
    return Case("wrong_type_json", rng.choice(choices), JSON, 400)


def _empty(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    blank = "".join(rng.choices(WHITESPACE, k=rng.randint(0, 50)))
    form = rng.randrange(3)
    if form == 0:
        return Case("empty", blank.encode(), rng.choice(["text/plain", None]), 400, words="empty")
    if form == 1:
        return Case("empty", _json({"text": blank}), JSON, 400, words="empty")
    return Case("empty", b"", rng.choice(["text/plain", JSON, None]), 400, words="empty")


def _control_json(rng: random.Random, texts: list[str], max_chars: int) -> Case:
    """Raw control characters inside a JSON string: invalid JSON (RFC 8259)."""
    text = rng.choice(texts)
    cut = rng.randrange(len(text) + 1)
    raw = text[:cut] + "".join(rng.choices(JSON_FORBIDDEN, k=rng.randint(1, 5))) + text[cut:]
    return Case("control_chars_json", b'{"text": "' + raw.encode() + b'"}', JSON, 400,
                words="not valid JSON")


def _huge(rng: random.Random, texts: list[str], max_chars: int,
          max_request_size: int) -> Case:
    size = max_request_size + rng.randint(1, 256 * 1024)
    body = (rng.choice(texts).encode() + b" ") * (size // 20 + 1)
    return Case("over_max_request_size", body[:size], rng.choice(["text/plain", JSON]), 413)


BAD_KINDS = {"random_bytes": _random_bytes, "invalid_utf8": _invalid_utf8,
             "over_max_chars": _over_max_chars, "deep_json": _deep_json,
             "wrong_type_json": _wrong_type, "empty": _empty, "control_chars_json": _control_json}


def generate(n: int, seed: int, texts: list[str], controls: list[str], max_chars: int,
             max_request_size: int, good_share: float = 0.3,
             huge_share: float = 0.005) -> list[Case]:
    """`n` cases: every kind at least once, then a seeded mix; good ones spread through it."""
    rng = random.Random(seed)
    kinds = list(BAD_KINDS)
    cases = [BAD_KINDS[k](rng, texts, max_chars) for k in kinds]
    cases.append(_huge(rng, texts, max_chars, max_request_size))
    cases += [_good(rng, texts, controls) for _ in range(5)]
    while len(cases) < n:
        roll = rng.random()
        if roll < good_share:
            cases.append(_good(rng, texts, controls))
        elif roll < good_share + huge_share:
            cases.append(_huge(rng, texts, max_chars, max_request_size))
        else:
            cases.append(BAD_KINDS[rng.choice(kinds)](rng, texts, max_chars))
    rng.shuffle(cases)
    return cases


def reference_labels(client: TorchServeClient, model: str, texts: list[str]) -> dict[str, dict]:
    """One sequential (unbatched) call per distinct text: what a batched answer must equal."""
    return {t: client.predict(model, t) for t in dict.fromkeys(texts)}


def send(client: TorchServeClient, model: str, case: Case) -> tuple[int, bytes]:
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    if case.kind == "over_max_request_size":
        headers["Connection"] = "close"  # the front end drops the connection after its 413
    try:
        resp = client.request("inference", "POST", f"/predictions/{model}", data=case.body,
                              headers=headers, timeout=120)
    except ClientError as e:
        return 0, str(e).encode()
    return resp.status_code, resp.content


def check(case: Case, status: int, content: bytes, refs: dict[str, dict]) -> str | None:
    """None when the answer is right, else what is wrong with it."""
    if status != case.status:
        return f"status {status}, expected {case.status}: {content[:200]!r}"
    if case.kind == "over_max_request_size" and not content.strip():
        return None  # the front end's own 413 carries no body
    try:
        body = json.loads(content)
    except ValueError:
        return f"answer is not JSON: {content[:200]!r}"
    if case.status != 200:
        if not isinstance(body, dict):
            return f"4xx answer is not a JSON object: {content[:200]!r}"
        message = body.get("error") or body.get("message")
        if not isinstance(message, str) or not message:
            return f"4xx answer has no error message: {content[:200]!r}"
        if case.words and case.words not in message:
            return f"message {message!r} lacks {case.words!r}"
        return None
    ref = refs[case.text]
    if body.get("label") != ref["label"]:
        return f"label {body.get('label')!r}, sequential call said {ref['label']!r}"
    diff = max(abs(body["probabilities"][k] - v) for k, v in ref["probabilities"].items())
    if diff > 1e-3:
        return f"probabilities differ from the sequential call by {diff:.2e}"
    return None


def workers(client: TorchServeClient, server: TorchServe, model: str) -> dict[str, Any]:
    described = client.describe(model)[0]["workers"]
    return {"described": sorted((int(w["pid"]), w["status"]) for w in described),
            "processes": sorted(server.worker_pids())}


def run_fuzz(server: TorchServe, client: TorchServeClient, model: str, cases: list[Case],
             threads: int = 16) -> dict[str, Any]:
    """Send `cases` concurrently; report every wrong answer and any worker change."""
    refs = reference_labels(client, model, [c.text for c in cases if c.text is not None])
    log_start = server.log_path.stat().st_size
    before = workers(client, server, model)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(lambda c: send(client, model, c), cases))
    duration = time.perf_counter() - started
    after = workers(client, server, model)
    with open(server.log_path, "rb") as f:
        f.seek(log_start)
        new_log = f.read().decode(errors="replace")
    deaths = [line.strip()[:300] for line in new_log.splitlines()
              if any(sign in line for sign in DEATH_SIGNS)]
    by_kind: dict[str, Counter] = {}
    failures = []
    for case, (status, content) in zip(cases, answers):
        by_kind.setdefault(case.kind, Counter())[str(status)] += 1
        problem = check(case, status, content, refs)
        if problem:
            failures.append({"kind": case.kind, "content_type": case.content_type,
                             "body": case.body[:120].decode(errors="backslashreplace"),
                             "body_bytes": len(case.body), "problem": problem})
    good = sum(c.status == 200 for c in cases)
    return {
        "n": len(cases), "good": good, "bad": len(cases) - good, "threads": threads,
        "duration_s": round(duration, 1), "requests_per_s": round(len(cases) / duration, 1),
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "failure_count": len(failures), "failures": failures[:25],
        "workers_before": before, "workers_after": after,
        "workers_unchanged": before == after,
        "all_ready": all(s == "READY" for _, s in after["described"]),
        "death_log_lines": deaths[:25],
    }


def default_run_dir() -> Path:
    """The demo's MiniLM run dir when it is intact; otherwise a quick MiniLM run of our own
    (reused on later calls). Never writes into runs/sentiment."""
    from handlers.errors import IntegrityError
    from handlers.manifest import verify_manifest
    from trainer.learning.train import TrainSettings, run_train

    demo = ROOT / "runs" / "sentiment" / "v1"
    try:
        verify_manifest(demo)
        return demo
    except IntegrityError:
        out = ROOT / "runs" / "bench" / "minilm-quick"
        run_train(TrainSettings(epochs=1, min_steps=0, patience=0, max_train=256, max_length=64,
                                batch_size=32, lr=2e-3),
                  "nyt", out, reuse=True)
        return out


def serve(run_dir: Path, workdir: Path, model: str = "fuzz", **archive: Any) -> TorchServe:
    """A TorchServe from the shipped config (token auth on) on free loopback ports, with
    `model`.v1.mar in its store (archive settings: `archive`, default max_chars=MAX_CHARS)."""
    from trainer.packaging.archive import ArchiveSettings, build_archive

    store = workdir / "store"
    build_archive(run_dir, model, "1", store, ArchiveSettings(**{"max_chars": MAX_CHARS,
                                                                 **archive}),
                  allow_weak=True)  # the quick model is weak; serving is what is measured
    return TorchServe(workdir / "ts", store, ROOT / "config.properties", ports="free")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="bodies to send (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--threads", type=int, default=16, help="client threads (default 16)")
    p.add_argument("--run", type=Path, help="run dir to serve (default: runs/sentiment/v1 "
                                            "if intact, else a quick MiniLM run)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuzz.json")
    args = p.parse_args()
    import tempfile

    run_dir = args.run or default_run_dir()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        os.environ["DRIFTSERVE_STATS_DIR"] = str(Path(tmp) / "stats")
        server = serve(run_dir, Path(tmp))
        try:
            server.start()
            client = TorchServeClient(server.inference_url, server.management_url,
                                      server.key_file)
            client.register("fuzz.v1.mar", "fuzz", workers=1)
            limit = int(server.props.get("max_request_size", 6_553_500))
            texts = good_texts()
            cases = generate(args.n, args.seed, texts, control_texts(texts), MAX_CHARS, limit)
            result = run_fuzz(server, client, "fuzz", cases, args.threads)
            model_config = client.describe("fuzz")[0]
        finally:
            server.stop()
    result.update({
        "seed": args.seed, "run_dir": str(run_dir), "max_chars": MAX_CHARS,
        "max_request_size": limit, "batch_size": model_config.get("batchSize"),
        "max_batch_delay_ms": model_config.get("maxBatchDelay"),
        "passed": (result["failure_count"] == 0 and result["workers_unchanged"]
                   and result["all_ready"] and not result["death_log_lines"]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "python": platform.python_version(),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result, sort_keys=False)
    print(json.dumps({k: result[k] for k in ("n", "good", "bad", "failure_count", "passed",
                                             "workers_unchanged", "duration_s")}))
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
