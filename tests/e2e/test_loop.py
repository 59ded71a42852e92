"""The closed loop in quick mode on a real TorchServe: drift fires on the new domain's traffic,
the captured traffic is sampled and labelled, adapt builds v2 from that file, the gate decides
on the domain's own test split, and the step table is written."""

import json

import pytest

from trainer.data.sources import load_source
from trainer.learning.adapt import AdaptSettings
from trainer.learning.train import TrainSettings
from trainer.loop.closed_loop import LoopSettings, run_loop
from trainer.loop.demo import DemoSettings
from trainer.model.rundir import read_report
from trainer.packaging.archive import ArchiveSettings

pytestmark = pytest.mark.e2e


def test_quick_loop_detects_adapts_and_rolls_out(tmp_path):
    runs, store, reports = tmp_path / "runs", tmp_path / "store", tmp_path / "report"
    store.mkdir()
    summary = run_loop(
        LoopSettings(stream=["tweets"], label=48, collect=150, check_every=50, max_traffic=150,
                     holdout=40, report_dir=str(reports)),
        # 16 training steps make a weak v1 on purpose (speed); the guard is tested elsewhere
        DemoSettings(per_domain=20, runs=str(runs), model_store=str(store), free_ports=True,
                     allow_weak=True),
        TrainSettings(epochs=1, min_steps=0, patience=0, lr_warmup=0.0, balance=False,
                      max_train=256, max_eval=200, max_length=64, lr=2e-3,
                      reference_per_domain=200),
        ArchiveSettings(),
        AdaptSettings(max_eval=80, epochs=1, min_steps=20, max_length=64,
                      reference_per_domain=200))
    assert set(summary["first_version"]) == {"nyt", "movie", "amazon", "tweets"}
    (step,) = summary["steps"]
    assert step["domain"] == "tweets" and step["drift_after_requests"] in (50, 100, 150)
    assert step["to_version"] == 2 and isinstance(step["promoted"], bool)
    assert set(step["after"]) == {"nyt", "tweets"} and step["rules"]
    assert summary["final_version"] == (2 if step["promoted"] else 1)
    # the gate's own rules decide: promoted exactly when every rule passed
    assert step["promoted"] == all(r.startswith("PASS ") for r in step["rules"]), step["rules"]
    assert step["outcome"] == ("promoted" if step["promoted"] else
                               "inconclusive" if any(r.startswith("INCONCLUSIVE ") for r in
                                                     step["rules"]) and not any(
                                   r.startswith("FAIL ") for r in step["rules"]) else "rejected")
    # nyt, which v1 serves, is judged on its held-out texts: disagreement evidence, churn reported
    nyt = next(r for r in step["rules"] if " nyt (old)" in r)
    assert "disagreement evidence" in nyt, nyt
    assert set(step["churn"]["nyt"]) == {"test", "unlabelled"} and step["gate_labels"] >= 0
    assert step["serving_after"] == summary["final_version"]
    # a refused candidate: the alarm is acknowledged, so v1's next alarm needs later traffic
    assert step.get("acknowledged", False) is (not step["promoted"])
    # the labeller's file: 48 herded texts of the captured tweets traffic (its train split)
    tweets = load_source("tweets", 0)["tweets"]
    assert step["labelling"]["captured"] == 150 and step["labelling"]["labelled"] == 48
    rows = [json.loads(line) for line in
            open(step["labelling"]["labelled_file"], encoding="utf-8").read().splitlines()]
    truth = {ex.text: ex.label for ex in tweets.train}
    assert len(rows) == 48 and all(truth[r["text"]] == r["label"] and r["domain"] == "tweets"
                                   for r in rows)
    assert len((reports / "step1" / "to_label.jsonl").read_text().splitlines()) == 48
    # the rest of the sampled pool: adapt self-trains on it (LoopSettings.unlabelled)
    rest = (reports / "step1" / "unlabelled.jsonl").read_text().splitlines()
    assert len(rest) == step["labelling"]["unpicked"] <= 150 - 48
    assert not {json.loads(line)["text"] for line in rest} & {r["text"] for r in rows}
    v2 = read_report(runs / "sentiment" / "v2")
    assert 0 < v2["self_training"]["unlabelled"] <= len(rest)
    assert v2["training_set"]["pseudo_labelled"] > 0
    # 48 labels leave 7 validation rows, too few to pick an epoch by: all 48 train
    assert v2["training_set"]["new"] == 48 and v2["domain"] == "tweets"
    # ... and the gate scored the built-in tweets test split, which the labeller never saw
    assert v2["domain_sources"]["tweets"]["source"] == "tweets"
    assert v2["test_by_domain"]["tweets"]["n"] == min(80, len(tweets.test))
    assert (store / "sentiment.v2.mar").is_file() and (runs / "sentiment" / "v2").is_dir()
    assert json.loads((reports / "loop.json").read_text())["steps"][0]["domain"] == "tweets"
    table = (reports / "loop.md").read_text()
    assert table.startswith("| step |")
    # the step's row says the labels it used, per class, the unlabelled texts and the gain
    counts = ", ".join(f"{k} {n}" for k, n in step["labelling"]["labels"].items())
    gain = 100 * (step["after"]["tweets"] - step["before"]["tweets"])
    assert f"| 48 ({counts}) + {len(rest)} |" in table and f"| {gain:+.1f} |" in table
    # the outcome: the serving version scored on the first version's texts, beside it
    assert set(summary["final_scores"]) == set(summary["first_version"])
    assert f"| v{summary['final_version']} accuracy (serving) |" in (reports / "loop.md").read_text()
    # v2 routes: tweets to its own weights, nyt to v1's, and the archive carries both
    assert v2["routing"]["experts"]["tweets"] == "model.safetensors"
    assert v2["routing"]["experts"]["nyt"].startswith("expert-")
    assert (reports / "loop.png").stat().st_size > 1000
