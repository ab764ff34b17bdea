"""deploy/alerts.yml (issue 13: dead-lettered prediction records alert): valid for promtool and naming only
metrics the services export, so a renamed metric cannot silence an alert."""
from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import yaml
from prometheus_client import REGISTRY

import services.inference.metrics  # noqa: F401 - importing registers each service's metrics
import services.monitoring.metrics  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_alert_rules_name_exported_metrics_and_pass_promtool():
    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert any("churn_monitoring_dead_letters_total" in e for e in expressions)
    exported = {name for family in REGISTRY.collect() for name in (family.name, family.name + "_total")}
    named = {n for e in expressions for n in re.findall(r"\bchurn_[a-z_]+", e)}
    assert named <= exported, sorted(named - exported)
    promtool = shutil.which("promtool")
    if promtool:
        done = subprocess.run([promtool, "check", "rules", str(ROOT / "deploy" / "alerts.yml")], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
