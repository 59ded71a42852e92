"""bench/drift.py --quick end to end (real MiniLM, the handler's own feature code): every
detector runs every scenario on the same streams, and the shipped one catches each whole-domain
switch after a full in-domain history. The full run's numbers go in the README."""

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
    s = result["settings"]
    assert set(result["detectors"]) == {"shipped", "one_window_alpha01"}
    for row in result["detectors"].values():
        if row["ert_false_alarms"] == 0:  # every in-domain request was watched
            assert row["ert_requests_observed"] == s["in_domain_streams"] * s["in_domain_length"]
        for domain in ("movie", "amazon", "tweets"):
            assert {f"switch_{domain}_median", f"mix10_{domain}_detected"} <= set(row)
    shipped = result["detectors"]["shipped"]
    for domain in ("movie", "amazon", "tweets"):
        assert shipped[f"switch_{domain}_detected"] == 1.0, shipped
        assert shipped[f"switch_{domain}_median"] <= 100  # the goal, on a tiny model
    assert result["alibi"].startswith("not run")
    assert (tmp_path / "drift-quick.md").read_text().startswith("| metric |")


def test_drift_after_adapt_quick(tmp_path):
    """bench/drift_adapted.py --quick: v2 adapted from labelled movie traffic, its reference
    holding nyt and movie; in-domain mixtures are watched, unseen domains still caught."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "drift_adapted.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "drift-adapted-quick.json").read_text())
    assert set(result["settings"]["reference_sizes"]) == {"nyt", "movie"}
    rows = result["rows"]
    for name in ("nyt+movie", "nyt 90 / movie 10", "nyt only", "movie only"):
        assert rows[name]["ert_requests_observed"] > 0, rows[name]
    for d in ("amazon", "tweets"):
        assert rows[f"switch to {d}"][f"switch_{d}_detected"] > 0, rows
    assert (tmp_path / "drift-adapted-quick.md").read_text().startswith("| traffic to v2")
