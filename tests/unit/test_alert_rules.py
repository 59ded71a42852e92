"""The shipped Prometheus alert rules parse as PromQL (promql-parser, the Rust parser Prometheus
tools use) and name only the series and labels the handler exports (metrics.yaml). Prometheus
itself is not run here; tests/e2e/test_drift.py shows the series on TorchServe's /metrics."""

import re
from pathlib import Path

import promql_parser
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = yaml.safe_load((ROOT / "deploy" / "prometheus-alerts.yml").read_text())
METRICS = yaml.safe_load((ROOT / "metrics.yaml").read_text())["model_metrics"]
DECLARED = {m["name"]: set(m["dimensions"]) | {"Hostname"}
            for kind in METRICS.values() for m in kind}
ALL_RULES = [r for group in RULES["groups"] for r in group["rules"]]


@pytest.mark.parametrize("rule", ALL_RULES, ids=[r["alert"] for r in ALL_RULES])
def test_rule_parses_and_names_exported_series_and_labels(rule):
    expr = " ".join(rule["expr"].split())
    promql_parser.parse(expr)  # raises ValueError naming the syntax error
    names = set(re.findall(r"\b(Drift[A-Za-z]+)\b", expr))
    assert names and names <= set(DECLARED), names - set(DECLARED)
    labels = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr)
              for label in group.split(",")}
    for name in names:
        assert labels <= DECLARED[name], (name, labels - DECLARED[name])
    assert rule["labels"]["severity"] in ("warning", "critical")
    assert rule["annotations"]["summary"]


def test_a_broken_rule_would_fail():
    with pytest.raises(ValueError):
        promql_parser.parse("max by (ModelName (DriftAlarm) == 1")
