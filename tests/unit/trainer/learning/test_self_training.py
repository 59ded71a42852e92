"""Self-training (`adapt --unlabelled`): class-balanced picks, the push check, bad files, and a
tiny end-to-end step whose second pass trains on the pseudo-labels."""

import json
from dataclasses import replace

import pytest
import torch

from trainer.common.errors import DataError, SettingsError
from trainer.data.sources import Example, load_source
from trainer.learning import self_training
from trainer.learning.adapt import AdaptSettings, new_domain, run_adapt
from trainer.learning.self_training import pseudo_label, push, read_unlabelled

LABELS = ["negative", "neutral", "positive"]
TINY = AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32,
                     max_train=48, max_eval=24, memory=30)


def fixed_logits(monkeypatch, logits: list[list[float]]) -> None:
    monkeypatch.setattr(self_training, "logits_of", lambda *a, **k: torch.tensor(logits))


def test_picks_the_most_confident_share_of_each_predicted_class(monkeypatch):
    # 6 texts predicted negative (confidence rising with i), 2 neutral, 0 positive
    logits = [[1.0 + i, 0.0, 0.0] for i in range(6)] + [[0.0, 3.0, 0.0], [0.0, 1.0, 0.0]]
    fixed_logits(monkeypatch, logits)
    texts = [f"t{i}" for i in range(8)]
    picked = pseudo_label(None, None, texts, LABELS, "new", 0.5, 32)
    assert [(ex.text, ex.label) for ex in picked.rows] == [
        ("t3", "negative"), ("t4", "negative"), ("t5", "negative"), ("t6", "neutral")]
    assert all(ex.domain == "new" for ex in picked.rows)
    assert picked.predicted_before == {"negative": 0.75, "neutral": 0.25, "positive": 0.0}
    assert picked.counts(LABELS) == {"negative": 3, "neutral": 1, "positive": 0}
    # a class with one text keeps it: the mix is the first pass's, not sharpened away
    one = pseudo_label(None, None, texts[:7], LABELS, "new", 0.1, 32)
    assert one.counts(LABELS) == {"negative": 1, "neutral": 1, "positive": 0}


def test_push_names_the_class_that_gained_most():
    assert push({"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}) == ("a", 0.3)
    assert push({"a": 0.5, "b": 0.5}, {"a": 0.5, "b": 0.5})[1] == 0.0


def rows(path, items) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return str(path)


def test_unlabelled_files_with_labels_or_nothing_usable_stop_with_the_line(tmp_path):
    test = [Example("in the test", "positive", "new")]
    labelled = [Example("already labelled", "negative", "new")]
    with pytest.raises(DataError, match=r"u\.jsonl:2: has label 'positive'; --unlabelled takes"):
        read_unlabelled(rows(tmp_path / "u.jsonl", [{"text": "a"}, {"text": "b",
                                                                   "label": "positive"}]),
                        test, labelled)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="--unlabelled .*empty.jsonl: no texts"):
        read_unlabelled(str(tmp_path / "empty.jsonl"), test, labelled)
    with pytest.raises(DataError, match="no texts left .*2 read"):
        read_unlabelled(rows(tmp_path / "all.jsonl", [{"text": "in the test"},
                                                      {"text": "already labelled"}]),
                        test, labelled)
    with pytest.raises(DataError, match=r"bad.jsonl:1: field 'text' is missing"):
        read_unlabelled(rows(tmp_path / "bad.jsonl", [{"txt": "x"}]), test, labelled)


def test_overlap_with_the_test_split_is_left_out_and_said(tmp_path, capsys):
    test = [Example("in the test", "positive", "new")]
    path = rows(tmp_path / "u.jsonl", [{"text": "in the test", "label": ""}, {"text": "fresh"},
                                       {"text": "fresh"}])
    assert read_unlabelled(path, test, []) == ["fresh"]
    assert "left 1 text(s) of" in capsys.readouterr().err


def test_a_step_with_unlabelled_texts_trains_twice_on_the_pseudo_labels(tiny_run, tmp_path,
                                                                        capsys):
    movie = load_source("movie", 0)["movie"]
    labelled = new_domain("movie", TINY, LABELS, ["nyt"]).train
    unlabelled = [ex.text for ex in movie.train[100:180]]
    path = rows(tmp_path / "u.jsonl", [{"text": t, "label": ""} for t in unlabelled])
    # --traffic-mix without unlabelled texts estimates nothing, and says so
    plain = run_adapt(replace(TINY, traffic_mix=True), tiny_run, "movie", tmp_path / "plain")
    assert "--traffic-mix estimates the class mix from --unlabelled texts" in \
        capsys.readouterr().err
    report = run_adapt(replace(TINY, traffic_mix=True), tiny_run, "movie", tmp_path / "v2",
                       unlabelled=path)
    st = report["self_training"]
    n = len(set(unlabelled) - {ex.text for ex in labelled + movie.test})
    assert st["unlabelled"] == n and sum(st["pseudo_labels"].values()) == \
        report["training_set"]["pseudo_labelled"] > 0
    assert abs(sum(st["pseudo_labels"].values()) - TINY.pseudo_share * n) <= len(LABELS)
    assert st["first_pass"]["examples_processed"] == plain["examples_processed"]
    assert report["examples_processed"] > 2 * plain["examples_processed"]
    assert set(st["predicted_after"]) == set(LABELS) and st["largest_push"]["label"] in LABELS
    assert plain["self_training"] is None and plain["training_set"]["pseudo_labelled"] == 0
    # with --traffic-mix the unlabelled texts also tell the domain's class mix, and the routed
    # expert answers with it
    mix = report["traffic_mix"]
    assert report["routing"] and mix["applied"] and mix["texts"] == n
    assert abs(sum(mix["estimated"].values()) - 1) < 1e-3
    assert report["class_mix"]["movie"] == mix["estimated"] != mix["learnt"]
    assert plain["traffic_mix"] is None
    # one model answering every domain keeps its mix: the estimate is reported, not applied
    one = run_adapt(replace(TINY, route=False, traffic_mix=True), tiny_run, "movie",
                    tmp_path / "one", unlabelled=path)
    assert not one["routing"] and not one["traffic_mix"]["applied"]
    assert one["class_mix"]["movie"] == one["traffic_mix"]["learnt"]
    with pytest.raises(SettingsError, match="pseudo_share must be in"):
        AdaptSettings(pseudo_share=0).validate()
