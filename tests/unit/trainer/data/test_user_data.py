"""A user's own file with default flags: labels from the data, splits said out loud, their own
val/test files, the weak-model guard, and the step plan that makes small data learn."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.common.errors import EXIT_WEAK, DataError
from trainer.data import lineage
from trainer.data.sources import Example, load_vader
from trainer.learning.fit import lr_shape, plan_epochs
from trainer.learning.train import run_train
from trainer.model.quality import assess, majority_baseline
from trainer.packaging.archive import ArchiveSettings, build_archive

ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def two_class_rows() -> list[dict]:
    """120 real amazon sentences, neutral dropped, relabelled as a user would name them."""
    rows = [{"text": ex.text, "label": "good" if ex.label == "positive" else "bad"}
            for ex in load_vader("amazon") if ex.label != "neutral"]
    return rows[:120]


@pytest.fixture(scope="module")
def quick(tiny_settings):
    return dataclasses.replace(tiny_settings, max_train=0)


def test_labels_come_from_the_data_and_splits_are_said(quick, two_class_rows, tmp_path, capfd):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows)
    report = run_train(quick, str(data), tmp_path / "run")
    err = capfd.readouterr().err
    assert report["labels"] == ["bad", "good"]  # sorted, and no third class
    assert json.loads((tmp_path / "run" / "labels.json").read_text()) == ["bad", "good"]
    sizes = report["split"]["sizes"]
    assert sum(sizes.values()) == 120 and sizes["val"] == sizes["test"] == 18
    assert "labels: bad, good" in err
    assert f"split {data} (120 rows, seed 0): train 84, val 18" in err
    assert "--val-data/--test-data" in err


def test_labels_flag_naming_an_absent_label_is_an_error(quick, two_class_rows, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows)
    with pytest.raises(DataError, match=r"--labels names \['meh'\], which never occur"):
        run_train(dataclasses.replace(quick, labels=["bad", "good", "meh"]), str(data),
                  tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_one_class_only_is_an_error(quick, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [{"text": f"t {i}", "label": "x"} for i in range(9)])
    with pytest.raises(DataError, match=r"at least 2 classes.*\['x'\]"):
        run_train(quick, str(data), tmp_path / "run")


def test_own_val_and_test_files_replace_the_split(quick, two_class_rows, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows[:80])
    val = write_jsonl(tmp_path / "v.jsonl", two_class_rows[80:100])
    test = write_jsonl(tmp_path / "t.jsonl", two_class_rows[100:])
    report = run_train(quick, str(data), tmp_path / "run", val_data=str(val), test_data=str(test))
    assert report["split"]["sizes"] == {"train": 80, "val": 20, "test": 20}
    assert report["split"]["val"] == str(val) and report["metrics"]["test"]["n"] == 20
    # the recorded lineage rebuilds exactly that test file for later steps (adapt, rollout)
    rebuilt = lineage.test_splits(report["domain_sources"], report["labels"])
    assert [ex.text for ex in rebuilt["mine"]] == [r["text"] for r in two_class_rows[100:]]


def test_own_test_file_with_an_unknown_label_or_domain_stops_early(quick, two_class_rows,
                                                                    tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows[:80])
    bad = write_jsonl(tmp_path / "t.jsonl", [{"text": "fine", "label": "great"}])
    with pytest.raises(DataError, match=r"t.jsonl:1: unknown label 'great'"):
        run_train(quick, str(data), tmp_path / "run", test_data=str(bad))
    other = write_jsonl(tmp_path / "o.jsonl", [{"text": "x", "label": "good", "domain": "web"}])
    with pytest.raises(DataError, match=r"--val-data: domain\(s\) \['web'\] do not occur"):
        run_train(quick, str(data), tmp_path / "run", val_data=str(other))
    assert not (tmp_path / "run").exists()


def test_weak_run_exits_3_is_written_marked_and_refused_by_archive(two_class_rows, tiny_base,
                                                                    tmp_path):
    """A tiny random BERT after one short pass cannot beat the majority class: the guard says
    so in one line, exits 3, still writes the run (marked weak); archive refuses it."""
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer", "train", "--data", str(data), "--out", str(out),
         "--base-model", str(tiny_base), "--epochs", "1", "--min-steps", "0", "--max-length",
         "32"], capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == EXIT_WEAK, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("WEAK MODEL")]
    assert len(lines) == 1 and "macro-F1" in lines[0] and "--allow-weak" in lines[0]
    # stderr is a pipe, not a terminal: no progress bars, no library noise, one line per
    # epoch, and a last line with the test scores.
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr
    assert "LOAD REPORT" not in proc.stderr and "Warning" not in proc.stderr
    assert proc.stderr.count("epoch 1: loss") == 1
    assert proc.stderr.splitlines()[-1].startswith(f"train wrote {out}: test mine accuracy ")
    report = json.loads(proc.stdout)
    assert report["quality"]["weak"] is True and (out / "report.json").is_file()
    store = tmp_path / "store"
    archive = [sys.executable, "-m", "trainer", "archive", "--run", str(out),
               "--model-store", str(store)]
    refused = subprocess.run(archive, capture_output=True, text=True, env=ONE_THREAD)
    assert refused.returncode == 2 and "marked weak" in refused.stderr
    assert not store.exists() or not list(store.glob("*.mar"))
    allowed = subprocess.run(archive + ["--allow-weak"], capture_output=True, text=True,
                             env=ONE_THREAD)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert (store / "sentiment.v1.mar").is_file()


def test_archive_names_a_missing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--run .*nowhere: no such run directory"):
        build_archive(tmp_path / "nowhere", "m", "1", tmp_path, ArchiveSettings())


def ex(label: str) -> Example:
    return Example("t", label, "d")


def test_assess_flags_majority_answers_and_unpredicted_classes():
    labels = ["a", "b"]
    train = [ex("a")] * 7 + [ex("b")] * 5
    val = [ex("a")] * 7 + [ex("b")] * 5
    base = majority_baseline(train, val, labels)
    assert base["label"] == "a" and base["macro_f1"] == pytest.approx(0.3684, abs=1e-4)
    majority_like = {"macro_f1": 0.3684, "predicted": {"a": 12, "b": 0},
                     "per_class_f1": {"a": 0.74, "b": 0.0}}
    q = assess(majority_like, train, val, labels, margin=0.1)
    assert q["weak"] and q["never_predicted"] == ["b"] and len(q["reasons"]) == 2
    good = {"macro_f1": 0.8, "predicted": {"a": 6, "b": 6}, "per_class_f1": {"a": 0.85, "b": 0.75}}
    assert assess(good, train, val, labels, margin=0.1)["weak"] is False
    barely = {"macro_f1": 0.45, "predicted": {"a": 6, "b": 6},  # predicts both, not clearly better
              "per_class_f1": {"a": 0.6, "b": 0.3}}
    assert assess(barely, train, val, labels, margin=0.1)["weak"] is True
    dead = {"macro_f1": 0.55, "predicted": {"a": 7, "b": 5}, "per_class_f1": {"a": 0.6, "b": 0.0}}
    q = assess(dead, train, val, labels, margin=0.1)  # predicts b, never right: F1 0
    assert q["weak"] and q["f1_zero"] == ["b"] and "never predicted right" in q["reasons"][-1]


def test_a_class_too_rare_in_validation_is_not_judged_by_its_predictions():
    """1 row of c among 14 cannot show that c is never predicted; the macro-F1 rule still
    catches a model that always answers one class."""
    labels = ["a", "b", "c"]
    train = [ex("a")] * 70 + [ex("b")] * 60 + [ex("c")] * 10
    val = [ex("a")] * 7 + [ex("b")] * 6 + [ex("c")] * 1
    misses_c = {"macro_f1": 0.6, "predicted": {"a": 8, "b": 6, "c": 0},
                "per_class_f1": {"a": 0.9, "b": 0.9, "c": 0.0}}
    q = assess(misses_c, train, val, labels, margin=0.1)
    assert not q["weak"] and q["too_rare_to_judge"] == {"c": 1} and q["never_predicted"] == []
    always_a = {"macro_f1": 0.2222, "predicted": {"a": 14, "b": 0, "c": 0},
                "per_class_f1": {"a": 0.6667, "b": 0.0, "c": 0.0}}
    q = assess(always_a, train, val, labels, margin=0.1)
    assert q["weak"] and q["never_predicted"] == ["b"]


@pytest.mark.parametrize("n,batch,epochs,min_steps,max_epochs,want", [
    (84, 16, 2, 300, 60, 50),     # 6 steps a pass: 300 steps need 50 passes
    (84, 16, 2, 300, 30, 30),     # ... capped
    (3600, 16, 2, 300, 30, 2),    # big data: the epoch floor
    (10, 16, 1, 0, 30, 1),
])
def test_plan_epochs(n, batch, epochs, min_steps, max_epochs, want):
    assert plan_epochs(n, batch, epochs, min_steps, max_epochs) == want


def test_lr_warms_up_then_decays_to_zero():
    shape = lr_shape(100, 0.1)
    values = [shape(i) for i in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and values[-1] < 0.02
    assert lr_shape(10, 0.0)(0) == 1.0


def test_early_stopping_keeps_the_best_epoch(quick, two_class_rows, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows)
    torch.manual_seed(0)
    report = run_train(dataclasses.replace(quick, epochs=6, max_epochs=6, patience=1,
                                           lr=1e-6), str(data), tmp_path / "run")
    history = report["history"]
    f1 = [h["val_macro_f1"] for h in history]
    assert len(history) < 6  # a learning rate this small cannot keep improving
    assert report["best_epoch"] == 1 + f1.index(max(f1))
    assert history[-1]["epoch"] - report["best_epoch"] == 1


def test_a_bad_base_model_path_names_itself(quick, two_class_rows, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", two_class_rows)
    settings = dataclasses.replace(quick, base_model=str(tmp_path / "no-model"))
    with pytest.raises(FileNotFoundError, match=r"--base-model .*no-model: expected a local "
                                                r"Hugging Face model directory"):
        run_train(settings, str(data), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_domain_flag_names_the_rows_of_every_file(quick, two_class_rows, tmp_path):
    """reviews_train.jsonl and reviews_test.jsonl are one domain, `reviews`, not two file
    names; adapt's new domain is named the same way, and both rebuild from the record."""
    from trainer.learning.adapt import AdaptSettings, run_adapt

    data = write_jsonl(tmp_path / "reviews_train.jsonl", two_class_rows[:90])
    test = write_jsonl(tmp_path / "reviews_test.jsonl", two_class_rows[90:])
    report = run_train(quick, str(data), tmp_path / "v1", test_data=str(test), domain="reviews")
    assert report["domains_seen"] == ["reviews"] and report["metrics"]["test"]["n"] == 30
    posts = [{"text": ex.text, "label": "good" if ex.label == "positive" else "bad"}
             for ex in load_vader("tweets") if ex.label != "neutral"][:90]
    new = write_jsonl(tmp_path / "posts_2026-12.jsonl", posts)
    settings = AdaptSettings(epochs=1, min_steps=0, patience=0,
                             batch_size=16, max_length=32, memory=20)
    adapted = run_adapt(settings, tmp_path / "v1", str(new), tmp_path / "v2", domain="posts")
    assert adapted["domains_seen"] == ["reviews", "posts"]
    rebuilt = lineage.test_splits(adapted["domain_sources"], adapted["labels"])
    assert sorted(rebuilt) == ["posts", "reviews"] and len(rebuilt["reviews"]) == 30
    with pytest.raises(DataError, match="--domain web: nyt is a built-in domain"):
        run_train(quick, "nyt", tmp_path / "v9", domain="web")


@pytest.mark.parametrize("rows", [300, 900, 3000])
def test_shuffled_labels_make_a_weak_model(quick, rows, tmp_path):
    """The user's file with its labels shuffled: nothing to learn, and train says so."""
    import random

    texts = [ex for ex in load_vader("tweets") if ex.label != "neutral"][:rows]
    labels = [("good" if ex.label == "positive" else "bad") for ex in texts]
    random.Random(rows).shuffle(labels)
    data = write_jsonl(tmp_path / "shuffled.jsonl",
                       [{"text": ex.text, "label": label} for ex, label in zip(texts, labels)])
    report = run_train(dataclasses.replace(quick, epochs=2), str(data), tmp_path / "run")
    q = report["quality"]
    assert q["weak"] is True, q
    assert q["judged_on"] == {"split": "test", "rows": report["split"]["sizes"]["test"]}


def test_answers_that_ignore_the_text_pass_the_guard_at_most_5_percent_of_the_time():
    """What a model trained on shuffled labels does: answers independent of the truth, with
    both classes predicted. The majority-class bar alone passed most of them (macro-F1 about
    0.5 against 0.37 + 0.1); the chance bar at 95 % confidence passes at most 5 %."""
    from trainer.model.evaluate import scores

    rng = np.random.default_rng(0)
    labels = ["bad", "good"]
    for n in (45, 135, 450):  # the test split of a 300, 900 and 3,000-row file
        passed = old_bar = 0
        trials = 100
        for _ in range(trials):
            truth = (rng.random(n) < 0.55).astype(int)
            answers = (rng.random(n) < 0.5).astype(int)
            rows = [ex(labels[t]) for t in truth]
            s = scores(truth.tolist(), answers.tolist(), labels)
            q = assess(s, rows, rows, labels, margin=0.1, split="test")
            passed += not q["weak"]
            old_bar += s["macro_f1"] >= q["majority_baseline"]["macro_f1"] + 0.1
        assert passed <= 0.05 * trials, (n, passed)
        assert old_bar >= 0.5 * trials, (n, old_bar)  # the guard this replaces


def test_every_defaults_bench_cell_that_met_its_goal_stays_not_weak(tmp_path):
    """bench/results/defaults.json, judged by the new guard on each cell's own test split, with
    the answers' class shares at their worst case for the chance bar (equal to the truth's)."""
    from bench.defaults import ROOT, cell_data

    results = json.loads((ROOT / "bench" / "results" / "defaults.json").read_text())["results"]
    met = [r for r in results if r["meets_goal"]]
    assert len(met) >= 20
    for r in met:
        _, _, train, test = cell_data(r, tmp_path)
        support = {label: sum(e.label == label for e in test) for label in r["labels"]}
        s = {"macro_f1": r["macro_f1"], "predicted": support, "per_class_f1": r["per_class_f1"]}
        q = assess(s, train, test, r["labels"], margin=0.1, split="test")
        assert not q["weak"], (r["domain"], r["rows"], r["classes"], r["seed"], q["reasons"])
