"""bench/soak.py in short mode against a real TorchServe (tiny model, so it starts fast): no
failed request, and the report has its slices with latency and worker memory. No timing asserts:
the 10-minute numbers are in docs/reliability.md."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_soak_short_mode(tiny_run: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", "8",
                           "--slice", "2", "--threads", "2", "--run", str(tiny_run),
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "soak.json").read_text())
    assert result["errors"] == 0 and result["requests"] > 0, result["error_samples"]
    assert result["workers_unchanged"] and result["all_ready"]
    assert len(result["slices"]) == 4
    for part in result["slices"]:
        assert part["requests"] > 0 and part["p99_ms"] is not None
        workers = [k for k in part["rss_mb"] if k.startswith("worker ")]
        assert workers and all(part["rss_mb"][k] > 0 for k in workers)
        assert part["rss_mb"].get("frontend", 0) > 0
    assert (tmp_path / "soak.png").stat().st_size > 0
