"""The closed loop in quick mode on a real TorchServe: drift fires on the new domain's traffic,
adapt builds v2, the gate decides, and the step table is written."""

import json

import pytest

from trainer.archive import ArchiveSettings
from trainer.demo import DemoSettings
from trainer.loop import LoopSettings, run_loop
from trainer.train import TrainSettings

pytestmark = pytest.mark.e2e


def test_quick_loop_detects_adapts_and_rolls_out(tmp_path):
    runs, store, reports = tmp_path / "runs", tmp_path / "store", tmp_path / "report"
    store.mkdir()
    summary = run_loop(
        LoopSettings(stream=["tweets"], shots=8, check_every=50, max_traffic=150, holdout=40,
                     adapt_max_eval=80, report_dir=str(reports)),
        # 16 training steps make a weak v1 on purpose (speed); the guard is tested elsewhere
        DemoSettings(per_domain=20, runs=str(runs), model_store=str(store), free_ports=True,
                     allow_weak=True),
        TrainSettings(epochs=1, min_steps=0, patience=0, lr_warmup=0.0, balance=False,
                      max_train=256, max_length=64, lr=2e-3),
        ArchiveSettings())
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
    assert (store / "sentiment.v2.mar").is_file() and (runs / "sentiment" / "v2").is_dir()
    assert json.loads((reports / "loop.json").read_text())["steps"][0]["domain"] == "tweets"
    assert (reports / "loop.md").read_text().startswith("| step |")
    assert (reports / "loop.png").stat().st_size > 1000
