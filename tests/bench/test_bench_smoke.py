"""Smoke runs of bench/continual.py and bench/herding.py in --quick mode (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def run(script: str, out: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_continual_quick_writes_json_markdown_and_png(tmp_path):
    run("continual.py", tmp_path)
    result = json.loads((tmp_path / "continual-quick.json").read_text())
    rows = list(result["aggregate"])
    assert [r[0] for r in rows[:7]] == list("1234567")
    assert {r for r in rows[7:]} == {"3 seq. LoRA, no replay (K=5)",
                                     "6 LoRA + herding + balancing (default) (K=5)"}
    assert len(result["per_seed"]) == len(result["settings"]["seeds"]) >= 3
    for name, agg in result["aggregate"].items():
        matrix = agg["mean_matrix"]
        assert len(matrix) == 4 and all(len(row) == 4 for row in matrix), name
        assert all(0 <= v <= 1 for row in matrix for v in row if v is not None)
        assert set(agg["std"]) == set(agg["mean"])
    assert result["aggregate"]["7 full retraining (joint)"]["mean"]["compute_vs_joint"] == 1.0
    assert result["aggregate"]["2 seq. full FT, no replay"]["mean"]["trainable_share"] == 1.0
    md = (tmp_path / "continual-quick.md").read_text()
    assert md.count("\n| ") == (1 + 7) + (1 + 2) and "Goals for row 6" in md
    assert (tmp_path / "continual-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("continual-") and p.is_dir()]


def test_herding_quick_asserts_identical_picks(tmp_path):
    run("herding.py", tmp_path)
    result = json.loads((tmp_path / "herding-quick.json").read_text())
    assert [r["m"] for r in result["rows"]] == [5, 20, 50]
    assert all(r["identical_picks"] and r["herding_s"] > 0 for r in result["rows"])
    assert "rank-all / herding" in (tmp_path / "herding-quick.md").read_text()


def test_serve_quick_measures_every_row_against_a_real_torchserve(tmp_path):
    """Rows a-c through a real TorchServe (tiny model), row d in process; no timing asserts."""
    run("serve.py", tmp_path)
    result = json.loads((tmp_path / "serve-quick.json").read_text())
    assert set(result["rows"]) == {"a", "b", "c", "d"}
    for row in "abc":
        assert [x["concurrency"] for x in result["rows"][row]] == [1, 8, 32]
    for xs in result["rows"].values():
        assert all(x["errors"] == 0 and x["throughput"] > 0 and x["p95_ms"] > 0 for x in xs)
    assert set(result["ratios"]) == {"a/b", "a/c", "a/d"}
    assert result["meta"]["merge_parity"] < 1e-4
    md = (tmp_path / "serve-quick.md").read_text()
    assert "stock pattern" in md and "Goals (CPU)" in md
    assert (tmp_path / "serve-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gpu_bench_without_cuda_exits_at_once_and_says_why(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: bench/gpu.py would run for minutes")
    proc = subprocess.run([str(ROOT / "bench" / "gpu.sh"), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "nothing measured" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_defaults_quick_runs_the_cli_per_cell_and_tables_it(tmp_path):
    """Two cells through `python -m trainer train --data FILE --test-data FILE` with a tiny
    random BERT: the harness works end to end, and such a model is (rightly) flagged weak."""
    run("defaults.py", tmp_path)
    result = json.loads((tmp_path / "defaults-quick.json").read_text())
    cells = result["results"]
    assert [(c["classes"], c["train_rows"]) for c in cells] == [(3, 102), (2, 102)]
    assert [len(c["labels"]) for c in cells] == [3, 2]  # labels from the data: no ghost class
    assert all(c["exit_code"] == 3 and c["weak"] and not c["meets_goal"] for c in cells)
    assert result["met"] == 0 and (tmp_path / "defaults-quick.md").read_text().count("\n| ") == 3
