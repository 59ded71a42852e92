"""Capture for labelling: workers keep the newest texts (opt-in, bounded), `trainer sample`
picks N by herding and writes a JSONL a labeller fills in, which `adapt` refuses until labelled."""

import json

import pytest

from handlers.errors import ConfigError
from handlers.runtime import ModelRuntime, RuntimeSettings
from handlers.stats import captured
from trainer.__main__ import main
from trainer.data.sources import load_vader

TEXTS = [e.text for e in load_vader("movie")[:12]]


@pytest.fixture
def stats(tiny_run, tmp_path):
    rt = ModelRuntime.load(tiny_run, settings=RuntimeSettings(
        stats_dir=str(tmp_path / "stats"), window=50, capture=5), name="m", version="1")
    answers = rt.predict(TEXTS)
    rt.monitor.persist()
    rt.monitor.close()
    return rt.monitor.directory, answers


def test_workers_keep_only_the_newest_texts_with_their_rows(stats):
    directory, answers = stats
    traffic = captured(directory)
    assert traffic["texts"] == TEXTS[-5:]  # bounded: the newest 5 of 12
    conf = traffic["names"].index("confidence")
    for row, answer in zip(traffic["features"], answers[-5:]):
        assert abs(row[conf] - max(answer["probabilities"].values())) < 1e-4


def test_sample_writes_rows_to_label_and_adapt_refuses_them_unlabelled(stats, tiny_run, tmp_path,
                                                                       capsys):
    directory, _ = stats
    out = tmp_path / "to_label.jsonl"
    assert main(["sample", "--stats-dir", str(directory), "--n", "3", "--out", str(out),
                 "--reference", str(tiny_run)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and len({r["text"] for r in rows}) == 3
    assert {r["text"] for r in rows} <= set(TEXTS[-5:])
    assert all(r["label"] == "" and r["predicted"] in ("negative", "neutral", "positive")
               and 0 < r["confidence"] <= 1 for r in rows)
    capsys.readouterr()
    assert main(["adapt", "--from", str(tiny_run), "--data", str(out),
                 "--out", str(tmp_path / "v2")]) == 2
    assert "to_label.jsonl:1: field 'label' is empty" in capsys.readouterr().err
    assert not (tmp_path / "v2").exists()


def test_the_texts_not_picked_go_to_unlabelled_out_and_not_to_stdout(stats, tmp_path, capsys):
    directory, _ = stats
    out, rest = tmp_path / "to_label.jsonl", tmp_path / "unlabelled.jsonl"
    assert main(["sample", "--stats-dir", str(directory), "--n", "2", "--out", str(out),
                 "--select", "all", "--unlabelled-out", str(rest)]) == 0
    picked = {json.loads(line)["text"] for line in out.read_text().splitlines()}
    others = [json.loads(line) for line in rest.read_text().splitlines()]
    assert all(set(r) == {"text"} for r in others)
    assert sorted([r["text"] for r in others] + sorted(picked)) == sorted(TEXTS[-5:])
    captured_out = capsys.readouterr()
    assert "unpicked" not in captured_out.out and "wrote the 3 texts" in captured_out.err


def test_bad_sample_requests_say_what_is_wrong_and_write_nothing(stats, tmp_path, capsys):
    directory, _ = stats
    out = tmp_path / "x.jsonl"
    for args, message in (
            (["--stats-dir", str(directory), "--n", "6", "--select", "all"],
             "only 5 texts are captured"),
            (["--stats-dir", str(directory), "--n", "2", "--select", "all", "--newest", "1"],
             "only 1 texts are captured among the newest 1"),
            (["--stats-dir", str(directory), "--n", "2"], "--select drifted needs the served "
                                                          "version's drift reference"),
            (["--stats-dir", str(tmp_path / "nope"), "--n", "1"], "no such directory"),
            (["--n", "1"], "give --model (ask TorchServe) or --stats-dir"),
            (["--model", "m", "--n", "1", "--key-file", str(tmp_path / "k"),
              "--management-url", "http://127.0.0.1:9"], "key file not found")):
        assert main(["sample", *args, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()


def test_capture_is_bounded_by_the_window():
    with pytest.raises(ConfigError, match="capture must be an integer in \\[0, window=10\\]"):
        RuntimeSettings(window=10, capture=11).validate()


def test_picks_are_spread_evenly_over_the_predicted_classes():
    from trainer.ops.sample import balanced_quota

    assert balanced_quota({0: 70, 1: 8, 2: 40}, 30) == {0: 11, 1: 8, 2: 11}
    assert balanced_quota({0: 5, 1: 5}, 10) == {0: 5, 1: 5}
    assert balanced_quota({0: 100, 1: 100, 2: 100}, 7) == {0: 3, 1: 2, 2: 2}
