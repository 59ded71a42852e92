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
    assert [r.split()[0] for r in rows[:10]] == [str(i) for i in range(1, 11)]
    assert set(rows[10:]) == {"3 seq. LoRA, no replay (K=5)",
                              "7 LoRA + herding + balancing + routing (default) (K=5)"}
    assert len(result["per_seed"]) == len(result["settings"]["seeds"]) >= 2  # a std needs 2
    for name, agg in result["aggregate"].items():
        matrix = agg["mean_matrix"]
        assert len(matrix) == 4 and all(len(row) == 4 for row in matrix), name
        assert all(0 <= v <= 1 for row in matrix for v in row if v is not None)
        assert set(agg["std"]) == set(agg["mean"])
    mean = {name: agg["mean"] for name, agg in result["aggregate"].items()}
    assert mean["1 source only"]["compute_vs_joint"] == 0.0  # v1, shared by every row, left out
    assert mean["2 seq. full FT, no replay"]["trainable_share"] == 1.0
    # EWC's Fisher passes are counted as compute: more than row 3's, which it otherwise equals.
    assert mean["4 EWC (LoRA)"]["compute_vs_joint"] > mean["3 seq. LoRA, no replay"]["compute_vs_joint"]
    assert all(lam in (1e2, 1e4) for lam in result["settings"]["ewc_lambda"])
    md = (tmp_path / "continual-quick.md").read_text()
    # main table 1 + 10 rows, few-shot 1 + 2, row 7's few-shot shares 1 + 1, seed claims 1 + 7
    assert md.count("\n| ") == (1 + 10) + (1 + 2) + (1 + 1) + (1 + 7), md
    m9, m7 = (mean[n] for n in ("9 row 10 + distillation from vN (replay + held-out, weight 3)",
                                "7 LoRA + herding + balancing + routing (default)"))
    assert m9["negative_flips"] is not None and 0 <= m7["disagreement"] <= 1
    assert mean["8 full retraining (joint)"]["negative_flips"] is None  # not chained: no churn
    assert "Goals for row 7" in md and md.startswith("Source model (v1, nyt): test macro-F1")
    assert (tmp_path / "continual-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("continual-") and p.is_dir()]


def test_continual_sweep_scores_each_knob_on_validation(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "continual.py"), "--quick",
                           "--out", str(tmp_path), "--seeds", "0", "--sweep"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "continual-sweep-quick.json").read_text())
    configs = [r["config"] for r in result["rows"]]
    assert configs[0] == "defaults" and len(configs) == len(set(configs)) >= 5
    assert result["best"] in configs
    assert all(0 < r["average_accuracy"] <= 1 for r in result["rows"])
    assert "validation accuracy" in (tmp_path / "continual-sweep-quick.md").read_text()


def test_continual_only_computes_the_units_named(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "continual.py"), "--quick",
                           "--out", str(tmp_path), "--seeds", "0", "--only", "1,3K5"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 source only: final avg acc" in proc.stdout
    assert "3 seq. LoRA, no replay (K=5): final avg acc" in proc.stdout
    assert "7 LoRA" not in proc.stdout and not list(tmp_path.iterdir())


def test_herding_quick_asserts_identical_picks(tmp_path):
    run("herding.py", tmp_path)
    result = json.loads((tmp_path / "herding-quick.json").read_text())
    assert [r["m"] for r in result["rows"]] == [5, 20, 50]
    assert all(r["identical_picks"] and r["herding_s"] > 0 for r in result["rows"])
    assert "rank-all / herding" in (tmp_path / "herding-quick.md").read_text()


def test_serve_quick_measures_every_row_against_a_real_torchserve(tmp_path):
    """Rows a-c, e (bf16) and g (ONNX Runtime) through a real TorchServe (tiny model), d, f and
    h in process, latency per length bucket, and the attention x threads trial; no timing
    asserts. e/f must be bf16 exactly where the runtime's own check says this CPU has native
    bf16, and say float32 elsewhere; g/h say their engine."""
    from handlers.runtime import cpu_has_bf16

    run("serve.py", tmp_path)
    result = json.loads((tmp_path / "serve-quick.json").read_text())
    rows = result["rows"]
    assert list(rows) == list("abcdefgh")
    for row in "abceg":
        assert [x["concurrency"] for x in rows[row]] == [1, 8, 32]
    for row in "dfh":
        assert [x["concurrency"] for x in rows[row]] == [1, 8]
    # every sentence length is sent (none dropped), and concurrency 1 is split by length
    mix = result["meta"]["length_mix"]
    assert result["meta"]["max_tokens"] is None and abs(sum(mix.values()) - 1) < 1e-9
    for row in "abcdefgh":
        buckets = rows[row][0]["by_length"]
        assert buckets and sum(b["requests"] for b in buckets.values()) == rows[row][0]["requests"]
        assert set(buckets) <= set(mix)
    for xs in rows.values():
        assert all(x["errors"] == 0 and x["throughput"] > 0 and x["p95_ms"] > 0 for x in xs)
    bf16 = "bfloat16 autocast" if cpu_has_bf16() else "float32"
    assert result["meta"]["compute"] == {"a": "float32", "c": "float32", "d": "float32",
                                         "e": bf16, "f": bf16, "g": "float32 (onnxruntime)",
                                         "h": "float32 (onnxruntime)"}
    assert set(result["ratios"]) == {"a/b", "a/c", "a/d", "e/a", "e/b", "e/f", "g/a", "g/e",
                                     "g/h"}
    assert all(list(r) == ["1", "8", "32"] for r in result["ratios"].values())  # JSON keys
    assert result["meta"]["merge_parity"] < 1e-4
    trial = result["trial"]
    dtypes = ["float32", "bfloat16"] if cpu_has_bf16() else ["float32"]
    assert sorted((r["dtype"], r["threads"], r["attn"]) for r in trial["rows"]) == sorted(
        (d, t, a) for d in dtypes for t in (1, 2) for a in ("sdpa", "eager"))
    assert trial["batch_sizes"] == [1, 8] and trial["runtime_attn"] in ("sdpa", "eager")
    assert all(r[f"batch {b}"]["throughput"] > 0 for r in trial["rows"] for b in (1, 8))
    assert len(trial["best"]) == 2 * len(dtypes)
    md = (tmp_path / "serve-quick.md").read_text()
    assert "stock pattern" in md and "Goals (CPU)" in md and "Trial, in process" in md
    goals = [line for line in md.splitlines() if line.startswith(("- met: ", "- MISSED: "))]
    assert len(goals) == 10 and sum("bf16: " in line for line in goals) == 4
    assert "Goals of the engine choice (#30)" in md and "Latency by length" in md
    assert md.count("| sdpa |") == md.count("| eager |") == 2 * len(dtypes)
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


def test_gate_quick_resamples_every_candidate(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gate.py"), "--quick",
                           "--trials", "20", "--new", "movie", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "gate-quick.json").read_text())
    assert [r["kind"] for r in result["rows"]] == ["default", "seq-lora", "new-only"]
    for r in result["rows"]:
        for counts in r["study"]["counts"].values():
            assert sum(counts.values()) == 20
        assert r["study"]["whole"]["gate"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert len(result["goals"]) == 3
    assert (tmp_path / "gate-quick.md").read_text().count("\n| movie |") == 3


def test_precision_cpu_scores_every_precision_against_float32(tmp_path, tiny_run):
    """bench/precision_cpu.py on the tiny run: every form (bf16 where the CPU has it, ONNX
    Runtime float32, and the int8 tries that are installed, ONNX Runtime's included) is scored on
    every domain next to float32, each judged by the 0.5-point rule. torch.compile is left out
    here: its minute of compiling buys a smoke test nothing (bench/serve.py row i runs it)."""
    from handlers.runtime import cpu_has_bf16

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "precision_cpu.py"), "--run",
                           str(tiny_run), "--per-domain", "24", "--threads", "1", "--no-compile",
                           "--out", str(tmp_path / "p")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("no native bf16" in proc.stderr) != cpu_has_bf16()
    result = json.loads((tmp_path / "p.json").read_text())
    names = set(result["speed"])
    assert {"float32", "int8 dynamic per-channel (torch.ao)", "onnxruntime float32",
            "int8 dynamic per-channel (onnxruntime)",
            "int8 static QDQ, reference texts (onnxruntime)"} <= names
    assert ("bf16 autocast" in names) == cpu_has_bf16()
    assert set(result["within_half_a_point_everywhere"]) == names - {"float32"}
    assert set(result["domains"]) == {"nyt", "movie", "amazon", "tweets"}
    for r in result["domains"].values():
        assert r["n"] == 24 and all("label_agreement" in r[n] for n in names - {"float32"})
        assert r["onnxruntime float32"]["label_agreement"] == 1.0  # the same graph, exported
    assert set(result["onnx_int8"]["layer_agreement_alone"]) == {"0", "1"}  # tiny BERT: 2 layers
    md = (tmp_path / "p.md").read_text()
    assert "within 0.5 points on every domain" in md and "per encoder layer quantised alone" in md


def test_continual_rows_reports_a_subset_and_the_few_shot_goals(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "continual.py"), "--quick",
                           "--out", str(tmp_path), "--seeds", "0", "--rows", "7,7K5,7K5U,11K5U",
                           "--unlabelled-shots", "5", "--stream", "nyt,movie", "--name", "few"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unlabelled texts labelled by the first" in proc.stderr  # self-training ran
    assert proc.stderr.count("output bias shifted to it") == 1  # row 11's step only
    result = json.loads((tmp_path / "few.json").read_text())
    default, mix = ("7 LoRA + herding + balancing + routing (default)",
                    "11 row 7 + the traffic's class mix")
    assert list(result["aggregate"]) == ["1 source only", default, f"{default} (K=5)",
                                         f"{default} (K=5 + unlabelled)",
                                         f"{mix} (K=5 + unlabelled)"]
    mean = {name: agg["mean"] for name, agg in result["aggregate"].items()}
    assert mean[default]["compute_vs_joint"] is None  # row 8 not run: no ratio to it
    assert mean[f"{default} (K=5 + unlabelled)"]["longest_step_minutes"] > 0
    md = (tmp_path / "few.md").read_text()
    assert "not measured: per-class F1 spread below row 6's (row 7: row 6 not run)" in md
    assert "not measured: final average >= row 8 - 0.5 points (row 7: row 8 not run)" in md
    assert "Few-shot goals:" in md and "share of the full-data gain" in md
    assert "| 5 | labels + unlabelled: self-training + traffic mix |" in md
    assert "not measured: K = 8, labels alone: >= 50 % of the full-data gain" in md
    assert "no old-domain worst drop above 2 points at any K" in md


def test_continual_rows_names_a_unit_that_does_not_exist(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "continual.py"), "--quick",
                           "--out", str(tmp_path), "--rows", "7K8U"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 2 and "--rows: no unit ['7K8U']" in proc.stderr
    assert not list(tmp_path.iterdir())
