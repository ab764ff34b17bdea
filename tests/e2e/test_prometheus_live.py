"""A real Prometheus (Debian's) scrapes the running suite with deploy/prometheus.yml's jobs (targets rewritten to the
suite's ports; Envoy's stats read on its loopback admin) and deploy/prometheus/ rules: every dashboard and rule
expression evaluates without error, those fed by the traffic sent here return data, every rule is healthy, and the
inference series carry one `alias` label (no `exported_alias`)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml

from churn.v1 import auth_pb2, inference_pb2, monitoring_pb2
from tests.deploy.tools import require
from tests.e2e.envoy_process import free_port

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "churn-dashboard.json"
RULES = ROOT / "deploy" / "prometheus"
# Panels that stay empty without feedback or server errors (another test may have sent feedback: not asserted).
MAY_BE_EMPTY = ("from feedback", "Server errors")


def _config(suite) -> dict:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    ports = {"auth:9101": suite.services["auth"].http_port, "monitoring:9104": suite.services["monitoring"].http_port,
             "inference-production:9102": suite.services["production"].http_port,
             "inference-staging:9103": suite.services["staging"].http_port}
    admin = suite.gateway.admin.removeprefix("http://")
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            group["targets"] = [admin if t == "gateway:9902" else f"127.0.0.1:{ports[t]}" for t in group["targets"]]
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES / pathlib.Path(name).name) for name in config["rule_files"]]
    return config


@pytest.fixture(scope="module")
def prometheus(suite, tmp_path_factory):
    binary = require("prometheus", "observability-tools")
    workdir = tmp_path_factory.mktemp("prometheus")
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(_config(suite)))
    address = f"127.0.0.1:{free_port()}"
    log = open(workdir / "prometheus.log", "wb")
    process = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address={address}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://{address}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _query(base: str, expr: str) -> list[dict]:
    answer = _api(base, "query", query=expr)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def _traffic(suite, customers) -> None:
    auth, inference, monitoring = suite.stubs()
    admin = suite.admin_token()
    for customer in customers[:5]:
        inference.Predict(inference_pb2.PredictRequest(customer=customer), metadata=suite.md(admin), timeout=10)
    # drift needs at least 50 logged rows (drift.MIN_ROWS)
    inference.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers[100:160]), metadata=suite.md(admin),
                           timeout=30)
    with pytest.raises(grpc.RpcError) as bad:  # a caller mistake: counted apart from server errors
        auth.Login(auth_pb2.LoginRequest(username="", password=""), metadata=suite.md(), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _update_metrics_until_drift(suite, timeout: float = 60) -> None:
    """The outbox ships predictions to monitoring in the background: recompute until drift covers them."""
    _, _, monitoring = suite.stubs()
    deadline = time.monotonic() + timeout
    while True:
        reply = monitoring.UpdateMetrics(monitoring_pb2.UpdateMetricsRequest(),
                                         metadata=suite.md(suite.admin_token(), key="ops"), timeout=120)
        if any(model.HasField("drift") for model in reply.models) or time.monotonic() > deadline:
            return
        time.sleep(2)


def _wait_for(base: str, expr: str, timeout: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = _query(base, expr)
            if result:
                return result
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no data for {expr}")


def test_every_dashboard_and_rule_expression_evaluates_on_the_live_suite(suite, customers, prometheus):
    _wait_for(prometheus, 'count(up == 1) == 5')
    _traffic(suite, customers)
    time.sleep(3)  # two scrapes after the traffic, so rate() over it has two samples
    _traffic(suite, customers)
    _update_metrics_until_drift(suite)
    _wait_for(prometheus, 'churn:grpc_caller_errors:rate5m{job="auth"} > 0')
    _wait_for(prometheus, "churn_monitoring_drift_share")

    empty = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            if not _query(prometheus, target["expr"]) and not any(m in panel["title"] for m in MAY_BE_EMPTY):
                empty.append(panel["title"])
    assert not empty, f"panels without data after traffic: {empty}"

    groups = _api(prometheus, "rules")["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == sum(len(g["rules"]) for name in ("recording.yml", "alerts.yml")
                             for g in yaml.safe_load((RULES / name).read_text())["groups"])
    assert all(rule["health"] == "ok" for rule in rules), [(r["name"], r.get("lastError")) for r in rules]
    for rule in rules:
        _query(prometheus, rule["query"])  # no error
    for recorded in ("churn:grpc_requests:rate5m", "churn:grpc_server_error_ratio:rate5m",
                     "churn:grpc_caller_errors:rate5m", "churn:inference_predict_seconds:p99_5m",
                     "churn:envoy_downstream_rq:rate5m", "churn:envoy_upstream_healthy_ratio"):
        assert _wait_for(prometheus, recorded, timeout=20), recorded
    firing = [a["labels"]["alertname"] for a in _api(prometheus, "alerts")["data"]["alerts"]
              if a["labels"]["alertname"] != "ChurnPredictLatencyHigh"]
    assert not [name for name in firing if name.startswith("ChurnServerError")], firing

    series = _query(prometheus, "churn_inference_predictions_total")
    assert series and all("exported_alias" not in s["metric"] for s in series)
    assert {s["metric"]["alias"] for s in series} >= {"production"}
    assert {s["metric"]["alias"] for s in _query(prometheus, 'up{job="inference"}')} == {"production", "staging"}
