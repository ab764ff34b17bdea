"""deploy/prometheus rules name only metrics the services export, so a renamed metric cannot silence an alert
(promtool's checks and the rule unit tests run in tests/deploy/test_prometheus_rules.py)."""
from __future__ import annotations

import pathlib
import re

import yaml
from prometheus_client import REGISTRY

import services.auth.metrics  # noqa: F401 - importing registers each service's metrics
import services.inference.metrics  # noqa: F401
import services.monitoring.metrics  # noqa: F401

RULES = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def test_rules_name_exported_metrics():
    expressions = [rule["expr"] for name in ("recording.yml", "alerts.yml")
                   for group in yaml.safe_load((RULES / name).read_text())["groups"] for rule in group["rules"]]
    assert any("churn_monitoring_dead_letters_total" in e for e in expressions)
    assert any("churn_monitoring_drift_share" in e for e in expressions)
    exported = {family.name + suffix for family in REGISTRY.collect() for suffix in SUFFIXES}
    named = {n for e in expressions for n in re.findall(r"(?<![:\w])churn_[a-z0-9_]+(?![:\w])", e)}
    assert named and named <= exported, sorted(named - exported)
