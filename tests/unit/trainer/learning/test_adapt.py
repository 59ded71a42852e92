"""`trainer adapt` on a tiny random BERT: the chain v1 -> v2 -> v3, its buffer, and bad inputs."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch

from handlers.errors import IntegrityError
from handlers.features import REFERENCE_FILE, Reference
from handlers.manifest import MANIFEST_NAME, verify_manifest
from trainer.common.errors import DataError, SettingsError
from trainer.data import lineage
from trainer.data.reference_texts import distil_half, read_reference_texts
from trainer.data.sources import Example, load_source
from trainer.learning.adapt import AdaptSettings, epoch_order, new_domain, run_adapt, train_step
from trainer.learning.balance import class_counts, effective_number_weights
from trainer.learning.herding import herding_order
from trainer.learning.replay_buffer import BUFFER_FILE, embeddings, read_buffer
from trainer.model.rundir import load_run
from trainer.packaging.archive import ArchiveSettings, build_archive

LABELS = ["negative", "neutral", "positive"]
TINY = AdaptSettings(epochs=1, min_steps=0, patience=0, batch_size=16, max_length=32, max_train=64,
                     max_eval=40, memory=30)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are microseconds: a second OpenMP thread only adds spin-waits,
    hundreds of times slower when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def chain(one_thread, tiny_run, tmp_path_factory):
    """v1 (tiny_run, nyt) -> v2 (movie) -> v3 (amazon)."""
    runs = tmp_path_factory.mktemp("chain")
    run_adapt(TINY, tiny_run, "movie", runs / "v2")
    run_adapt(TINY, runs / "v2", "amazon", runs / "v3")
    return tiny_run, runs / "v2", runs / "v3"


def report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def step_class_counts(v1) -> dict[str, int]:
    """Labels of what step 2 trained on, counted from its inputs: v1's replay buffer and the
    first 64 movie training sentences."""
    new = new_domain("movie", TINY, LABELS, ["nyt"]).train
    found = Counter(ex.label for ex in read_buffer(v1).items() + new)
    return {label: found[label] for label in LABELS}


def test_v2_verifies_archives_and_carries_a_2x2_matrix(chain, tmp_path):
    v1, v2, _ = chain
    assert BUFFER_FILE in verify_manifest(v2) and BUFFER_FILE in verify_manifest(v1)
    r1, r2 = report(v1), report(v2)
    assert r2["domains_seen"] == ["nyt", "movie"] and r2["kind"] == "adapt"
    assert r2["accuracy_matrix"][0] == [r1["accuracy_matrix"][0][0], None]
    assert len(r2["accuracy_matrix"]) == 2 and len(r2["accuracy_matrix"][1]) == 2
    assert r2["accuracy_matrix"][1] == [r2["test_by_domain"][d]["accuracy"] for d in ("nyt", "movie")]
    assert r2["test_by_domain"]["movie"]["n"] == TINY.max_eval
    assert set(r2["continual"]) >= {"average_accuracy", "forgetting", "backward_transfer",
                                    "worst_drop", "average_incremental_accuracy"}
    assert r2["settings"] == dataclasses.asdict(TINY)
    assert 0 < r2["parameters"]["share"] < 0.5
    assert r2["training_set"] == {"new": 64, "replay": sum(read_buffer(v1).sizes().values()),
                                  "pseudo_labelled": 0, "class_counts": step_class_counts(v1)}
    assert r2["examples_processed"] == 64 + r2["training_set"]["replay"]
    assert r2["distillation"] is None  # off by default (bench/results/distill-sweep.md)
    churn = r2["churn"]["nyt"]
    assert set(churn) == {"test", "unlabelled"} and churn["test"]["n"] == r2["test_by_domain"]["nyt"]["n"]
    assert 0 <= churn["test"]["negative_flip_rate"] <= churn["test"]["disagreement"] <= 1
    assert churn["unlabelled"]["n"] == len(read_reference_texts(v1)["nyt"])
    f1 = r2["metrics"]["test"]["per_class_f1"].values()
    assert r2["per_class_f1_spread"] == pytest.approx(max(f1) - min(f1), abs=1e-4)
    _, _, labels, _ = load_run(v2)
    assert labels == LABELS
    mar = build_archive(v2, "sentiment", "2", tmp_path, ArchiveSettings(), allow_weak=True)
    with zipfile.ZipFile(mar) as z:
        assert z.read(MANIFEST_NAME) == (v2 / MANIFEST_NAME).read_bytes()


def test_second_adapt_gives_3x3_and_keeps_earlier_rows(chain):
    _, v2, v3 = chain
    r2, r3 = report(v2), report(v3)
    assert r3["domains_seen"] == ["nyt", "movie", "amazon"] and r3["step"] == 2
    assert [row[:2] for row in r3["accuracy_matrix"][:2]] == [row[:2] for row in r2["accuracy_matrix"]]
    assert [len(row) for row in r3["accuracy_matrix"]] == [3, 3, 3]
    assert r3["accuracy_matrix"][1][2] is None and r3["accuracy_matrix"][2][2] is not None
    assert r3["examples_processed_total"] == r2["examples_processed_total"] + r3["examples_processed"]
    assert r3["domain_sources"]["movie"] == r2["domain_sources"]["movie"]


def test_buffer_budget_truncates_old_groups_to_their_prefix(chain):
    v1, v2, v3 = chain
    b1, b2, b3 = (read_buffer(v) for v in chain)
    assert sum(b2.sizes().values()) <= TINY.memory and sum(b3.sizes().values()) <= TINY.memory
    assert len(b2.groups) == 6 and len(b3.groups) == 9
    for group, items in b2.groups.items():
        assert len(items) <= -(-TINY.memory // 6)
        if group[0] == "nyt":
            assert len(b1.groups[group]) > len(items) > 0
            assert items == b1.groups[group][: len(items)]
    for group, items in b3.groups.items():
        if group in b2.groups:
            assert items == b2.groups[group][: len(items)] and len(items) <= -(-TINY.memory // 9)


def test_new_groups_are_herded_with_the_new_models_features(chain):
    _, v2, _ = chain
    model, tokenizer, labels, _ = load_run(v2, experts=False)  # v2's own weights herd
    train = new_domain("movie", TINY, labels, ["nyt"]).train
    buffer = read_buffer(v2)
    for label in labels:
        items = [ex for ex in train if ex.label == label]
        feats = embeddings(model, tokenizer, [ex.text for ex in items], TINY.max_length)
        want = [items[i] for i in herding_order(feats, len(buffer.groups[("movie", label)]))]
        assert buffer.groups[("movie", label)] == want


def test_shots_take_exactly_k_per_class(tiny_run, tmp_path):
    s = dataclasses.replace(TINY, shots=3, selection="none")
    r = run_adapt(s, tiny_run, "tweets", tmp_path / "v2")
    assert r["training_set"]["new"] == 9 and r["training_set"]["replay"] == 0
    assert r["training_set"]["class_counts"] == dict.fromkeys(LABELS, 3)
    assert read_buffer(tmp_path / "v2").groups == {}
    # Few-shot keeps no validation split: the previous version's temperature and accuracy
    # estimators are carried over.
    previous = Reference.load(tiny_run / REFERENCE_FILE)
    assert r["calibration"]["kept_from"] == str(tiny_run)
    v2 = Reference.load(tmp_path / "v2" / REFERENCE_FILE)
    assert (v2.temperature, v2.accuracy_fit) == (previous.temperature, previous.accuracy_fit)
    assert v2.accuracy_fit is not None
    with pytest.raises(DataError, match="--shots 100000 but these classes have fewer"):
        run_adapt(dataclasses.replace(s, shots=100_000), tiny_run, "tweets", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_labelled_traffic_file_with_a_built_in_test_split(tiny_run, tmp_path, capsys):
    """The loop's path: texts sampled from traffic and labelled (here: movie's train split)
    adapt v1, and the gate's test split stays movie's own, recorded so rollout rebuilds it."""
    movie = load_source("movie", TINY.seed)["movie"]
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"text": ex.text, "label": ex.label,
                                            "domain": "movie"}) + "\n"
                                for ex in movie.train[:60]))
    s = dataclasses.replace(TINY, max_eval=0)
    r = run_adapt(s, tiny_run, str(labelled), tmp_path / "v2", test_data="movie")
    new = new_domain(str(labelled), s, LABELS, ["nyt"], "movie")
    # 60 rows leave 9 for validation, too few to pick an epoch by: they train too
    assert len(new.train) == 60 and not new.val and new.test == movie.test
    assert "9 validation rows (< --min-val 30) join the 51 training rows" in \
        capsys.readouterr().err
    apart = new_domain(str(labelled), dataclasses.replace(s, min_val=0), LABELS, ["nyt"], "movie")
    assert len(apart.train) == 51 and len(apart.val) == 9
    assert r["domain"] == "movie" and r["training_set"]["new"] == len(new.train)
    assert r["test_by_domain"]["movie"]["n"] == len(movie.test)
    rebuilt = lineage.test_splits({"movie": r["domain_sources"]["movie"]}, LABELS)["movie"]
    assert [ex.text for ex in rebuilt] == [ex.text for ex in movie.test]
    reference = read_reference_texts(tmp_path / "v2")["movie"]
    assert len(reference) > 60  # the test texts, never the labelled ones trained on
    assert not set(reference) & {ex.text for ex in movie.train[:60]}
    assert set(apart.held_out) & {ex.text for ex in apart.val}  # kept apart: held out too
    # rows of the training file that are also test rows are left out of training, said once
    both = new_domain("movie", s, LABELS, ["nyt"], "movie")
    trained = {ex.text for ex in both.train + both.val}
    assert both.train and not trained & {ex.text for ex in movie.test}
    assert len(both.train) + len(both.val) < len(movie.train) + len(movie.val) + len(movie.test)
    assert "left" in capsys.readouterr().err
    with pytest.raises(DataError, match="no rows of domain 'movie'"):
        run_adapt(s, tiny_run, str(labelled), tmp_path / "v3", test_data="tweets")
    assert not (tmp_path / "v3").exists()


def test_class_weights_count_the_whole_step_training_set(chain):
    v1, v2, _ = chain
    r = report(v2)
    counts = [step_class_counts(v1)[label] for label in LABELS]
    want = effective_number_weights(counts, TINY.beta).tolist()
    assert r["class_weights"] == pytest.approx(want) and sum(want) == pytest.approx(3)


def _bad_inputs(tmp_path, tiny_run):
    unknown = tmp_path / "shop.jsonl"
    unknown.write_text('{"text": "great", "label": "positive"}\n{"text": "so-so", "label": "mixed"}\n')
    empty = tmp_path / "empty.csv"
    empty.write_text("text,label,domain\n")
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps({"text": f"t{i}", "label": "positive", "domain": "nyt"}) + "\n"
                           for i in range(10)))
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    labels = broken / "labels.json"
    labels.write_text(labels.read_text().replace("neutral", "neutrl"))
    return [(tiny_run, str(unknown), DataError, "unknown label 'mixed'"),
            (tiny_run, str(empty), DataError, "no examples"),
            (tiny_run, str(old), DataError, "'nyt' was already learnt"),
            (broken, "movie", IntegrityError, "labels.json"),
            (tiny_run, "nosuchdomain", DataError, "no such file")]


def test_bad_inputs_stop_before_anything_is_written(tiny_run, tmp_path):
    for source_run, data, error, message in _bad_inputs(tmp_path, tiny_run):
        runs = tmp_path / "runs"
        with pytest.raises(error, match=message):
            run_adapt(TINY, source_run, data, runs / "v2")
        assert not runs.exists(), data
    before = {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()}
    with pytest.raises(ValueError, match="must differ from --from"):
        run_adapt(TINY, tiny_run, "movie", tiny_run)
    assert {p.name: p.stat().st_mtime_ns for p in tiny_run.iterdir()} == before


def test_settings_report_every_problem():
    with pytest.raises(SettingsError) as info:
        AdaptSettings(selection="best", beta=1.0, defer_epochs=5, epochs=2, shots=-1,
                      replay_ratio=0.5, balanced_sampler=True).validate()
    for field in ("selection", "beta", "defer_epochs", "shots", "replay_ratio"):
        assert field in str(info.value)


def test_epoch_orders_balance_groups_and_mix_replay():
    train = ([Example(f"r{i}", "neutral", "nyt") for i in range(10)]
             + [Example(f"n{i}", "positive" if i % 10 else "neutral", "movie") for i in range(90)])
    g = torch.Generator().manual_seed(0)
    balanced = epoch_order(train, 10, dataclasses.replace(TINY, balanced_sampler=True))(g)
    per_group = Counter((train[i].domain, train[i].label) for i in balanced)
    assert len(balanced) == 100 and min(per_group.values()) > 20  # 3 groups, about 33 each
    mixed = epoch_order(train, 10, dataclasses.replace(TINY, replay_ratio=0.5))(g)
    assert sum(i < 10 for i in mixed) == 90 and sorted(i for i in mixed if i >= 10) == list(range(10, 100))
    assert epoch_order(train, 10, TINY) is None
    assert class_counts([0, 2], 3) == [1, 0, 1]


def test_cli_evaluate_and_adapt(chain, tmp_path):
    _, v2, _ = chain
    proc = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--run", str(v2),
                           "--max-length", "32"], capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {d: s["accuracy"] for d, s in out["by_domain"].items()} == {
        d: s["accuracy"] for d, s in report(v2)["test_by_domain"].items()}
    # --against v1: the same churn adapt measured against v1 when it wrote v2
    proc = subprocess.run([sys.executable, "-m", "trainer", "evaluate", "--run", str(v2),
                           "--max-length", "32", "--domains", "nyt", "--against", str(chain[0])],
                          capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["churn"] == report(v2)["churn"]
    assert "right -> wrong" in proc.stderr
    broken = tmp_path / "v2"
    shutil.copytree(v2, broken)
    (broken / BUFFER_FILE).write_text("{}")
    proc = subprocess.run([sys.executable, "-m", "trainer", "adapt", "--from", str(broken),
                           "--data", "tweets", "--out", str(tmp_path / "v3")],
                          capture_output=True, text=True, env=ONE_THREAD)
    assert proc.returncode == 2 and "replay_buffer.json" in proc.stderr
    assert not (tmp_path / "v3").exists()


def test_evaluate_scores_a_given_file_whole_and_says_which_rows(chain, tmp_path):
    from trainer.data.sources import load_vader
    from trainer.learning.evaluate_cli import run_evaluate

    rows = load_vader("movie")[:40]
    path = tmp_path / "reviews_test.jsonl"
    path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
    out = run_evaluate(chain[1], [str(path), "nyt"], max_length=32)
    scored = out["by_domain"]["reviews_test"]
    assert scored["n"] == 40 and scored["scored"] == "every row of reviews_test.jsonl"
    assert out["by_domain"]["nyt"]["scored"].startswith("the 15 % test split of nyt, seed 0")


@pytest.mark.parametrize(("verb", "flag"), [("adapt", "--selection"), ("evaluate", "--domains")])
def test_verbs_are_registered_with_help(verb, flag, capsys):
    from trainer.__main__ import parser

    with pytest.raises(SystemExit) as info:
        parser().parse_args([verb, "--help"])
    assert info.value.code == 0 and flag in capsys.readouterr().out


def test_drift_reference_covers_every_domain_served(chain):
    """v3's reference is rebuilt with v3's model over held-out text of nyt, movie and amazon;
    the texts of earlier domains are carried unchanged from run to run."""
    v1, v2, v3 = chain
    texts = [read_reference_texts(v) for v in (v1, v2, v3)]
    assert [list(t) for t in texts] == [["nyt"], ["nyt", "movie"], ["nyt", "movie", "amazon"]]
    assert texts[2]["nyt"] == texts[1]["nyt"] == texts[0]["nyt"]
    assert texts[2]["movie"] == texts[1]["movie"]
    reference = Reference.load(v3 / REFERENCE_FILE)
    assert reference.domains == ["nyt", "movie", "amazon"]
    counts = np.bincount(reference.domain_index, minlength=3).tolist()
    assert counts == [len(texts[2][d]) for d in reference.domains]
    assert report(v3)["reference_sizes"] == dict(zip(reference.domains, counts))
    assert "quality" in report(v3) and "majority_baseline" in report(v3)["quality"]


def test_held_out_distillation_uses_only_the_distillable_half_unlabelled(chain, tmp_path):
    v1 = chain[0]
    r = run_adapt(dataclasses.replace(TINY, distill=3.0, distill_held_out=True), v1, "movie",
                  tmp_path / "v2")
    half = [t for t in read_reference_texts(v1)["nyt"] if distil_half(t)]
    d = r["distillation"]
    assert d["unlabelled_rows"] == len(half) > 0
    assert d["rows"] == r["training_set"]["replay"] + len(half)
    n = 64 + r["training_set"]["replay"] + len(half)  # one pass over labelled + unlabelled rows
    assert r["examples_processed"] == n + round(n / 3)  # + vN's forward, a third of an example
    # the unlabelled rows carry no label into the class weights or the training-set counts
    assert sum(r["training_set"]["class_counts"].values()) == 64 + r["training_set"]["replay"]
    with pytest.raises(SettingsError, match="distill_rows must be one of"):
        dataclasses.replace(TINY, distill_rows="some").validate()


def test_keep_interpolates_the_merged_weights_towards_vn(chain):
    """keep=0.5 lands halfway between vN and the keep=1 result, on every weight."""
    v1 = chain[0]
    model, tokenizer, labels, _ = load_run(v1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train = load_source("movie", 0)["movie"].train[:32]
    full, *_ = train_step(model, tokenizer, train, [], labels, TINY)
    half, *_ = train_step(load_run(v1)[0], tokenizer, train, [], labels,
                          dataclasses.replace(TINY, keep=0.5))
    for name, p in half.named_parameters():
        expected = before[name] + 0.5 * (dict(full.named_parameters())[name] - before[name])
        assert torch.allclose(p, expected, atol=1e-5), name
    assert any(not torch.equal(p, before[n]) for n, p in half.named_parameters())
    with pytest.raises(SettingsError, match="keep must be in"):
        dataclasses.replace(TINY, keep=0.0).validate()
