"""Recording rules and alerts: `promtool test rules` unit tests (every alert has one), and every Envoy metric the
dashboard and the rules name is one a real Envoy on the rendered config exports."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import urllib.request

import pytest
import yaml

from gateway import extras
from tests.deploy.envoy_stats import StatsEnvoy, gateway_env
from tests.deploy.tools import require

ROOT = pathlib.Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "churn-dashboard.json"


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]


def rule_exprs() -> list[str]:
    return [rule["expr"] for name in ("recording.yml", "alerts.yml")
            for group in yaml.safe_load((RULES / name).read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str, prefix: str) -> set[str]:
    """Metric names in a PromQL expression: label lists (`by (...)`, `{...}`) and recorded `a:b:c` names removed."""
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)|\{[^}]*\}", " ", expr)
    return set(re.findall(rf"(?<![:\w]){prefix}[a-z0-9_]+(?![:\w])", bare))


def test_promtool_rule_unit_tests_pass():
    promtool = require("promtool", "observability-tools")
    done = subprocess.run([promtool, "test", "rules", "rules.test.yml"], cwd=RULES, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_alert_has_a_unit_test():
    alerts = {rule["alert"] for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
              for rule in group["rules"]}
    tested = {case["alertname"] for test in yaml.safe_load((RULES / "rules.test.yml").read_text())["tests"]
              for case in test.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts and alerts <= tested, alerts - tested


def test_error_panels_and_alerts_keep_caller_mistakes_apart():
    panels = {p["title"]: p["targets"][0]["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    assert "INVALID_ARGUMENT" not in panels["Server errors by service and code"]
    assert 'code=~"' in panels["Server errors by service and code"]
    assert 'code!~"OK|' in panels["Caller mistakes by service and code"]
    assert not any('code!="OK"' in expr for expr in dashboard_exprs() + rule_exprs())


@pytest.fixture(scope="module")
def envoy_metric_names(tmp_path_factory) -> set[str]:
    envoy = StatsEnvoy(gateway_env(tmp_path_factory.mktemp("env")), tmp_path_factory.mktemp("envoy"))
    try:
        url = f"http://127.0.0.1:{envoy.ports[extras.STATS_LISTENER]}{extras.STATS_PATH}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
    finally:
        envoy.stop()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_envoy_metrics_named_by_the_dashboard_and_rules_exist(envoy_metric_names):
    named = {name for expr in dashboard_exprs() + rule_exprs() for name in metric_names(expr, "envoy_")}
    assert {"envoy_http_downstream_rq_xx", "envoy_http_local_rate_limit_rate_limited",
            "envoy_cluster_membership_healthy"} <= named
    assert named <= envoy_metric_names, named - envoy_metric_names
