"""bench/drift.py --quick end to end (real TorchServe, real MiniLM): it runs and reports every
detector and scenario. No timing or accuracy assertions: the full run's numbers go in the README."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_drift_bench_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "drift.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "drift-quick.json").read_text())
    for detector in ("product", "pca_only", "raw_bonferroni"):
        row = result[detector]
        assert 0 <= row["false_alarm_rate"] <= 1
        for domain in ("movie", "amazon", "tweets"):
            assert 0 <= row[f"switch_{domain}_detected"] <= 1
        assert {"mix_10_detected_within_500", "mix_20_detected_within_500"} <= set(row)
    assert result["served_vs_inprocess_max_abs_diff"] < 1e-3  # served features == in-process
    assert result["latency"]["stats_on_p50_ms"] > 0
    assert (tmp_path / "drift-quick.md").read_text().startswith("| metric |")
