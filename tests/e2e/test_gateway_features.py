"""Gateway features end to end: key rotation at auth without restarting Envoy, a REST CSV over 3 MiB, grpcurl
through the gateway with reflection, CORS for browsers, /healthz with Envoy's view of every upstream."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import jwt
import pytest

from churn.v1 import auth_pb2, inference_pb2
from tests.e2e.conftest import TELCO_CSV

pytestmark = pytest.mark.integration
GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"


def test_rotated_keys_are_accepted_without_restarting_envoy(suite, customers):
    auth, inference, _ = suite.stubs()
    admin = suite.admin_token()
    old_kid = jwt.get_unverified_header(admin)["kid"]
    envoy_pid = suite.gateway.process.pid
    rotated = auth.RotateKeys(auth_pb2.RotateKeysRequest(), metadata=suite.md(admin, key="ops"), timeout=10)
    assert rotated.next_kid != old_kid and rotated.next_kid in rotated.published_kids
    signs_from = rotated.next_signs_from.ToMicroseconds() / 1e6
    assert signs_from > time.time()  # published first, signing later (>= Envoy's JWKS refresh)
    time.sleep(max(0.0, signs_from - time.time() + 0.5))
    new_token = suite.admin_token()
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.next_kid, (signs_from, time.time(), old_kid)
    reply = inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=suite.md(new_token),
                              timeout=10)
    assert reply.prediction.model.alias == "production"
    assert suite.rest("GET", "/v1/canary", token=new_token).status == 200
    # the token signed by the previous key keeps working until it expires
    assert suite.rest("GET", "/v1/canary", token=admin).status == 200
    assert suite.gateway.process.pid == envoy_pid and suite.gateway.process.poll() is None


def test_rest_csv_over_3_mib(suite, customers, production_reference):
    data = TELCO_CSV.read_bytes()
    header, _, rows = data.partition(b"\n")
    body = header + b"\n" + rows * 4
    assert len(body) > 3 * 1024 * 1024
    count = body.count(b"\n", len(header) + 1)
    reply = suite.rest("POST", "/v1/predict:csv", body, token=suite.service_token,
                       headers={"content-type": "text/csv"}, timeout=120)
    assert reply.status == 200, reply.body[:500]
    result = reply.json()
    assert len(result["predictions"]) == count == 4 * len(customers)
    # the CSV has its Churn column: accuracy is the share of rows whose label the reference model predicts
    labels = [row.split(b",")[-1].strip() == b"Yes" for row in rows.splitlines() if row.strip()]
    predicted = production_reference.probability(customers) >= production_reference.threshold
    assert len(labels) == len(predicted)
    assert result["accuracy"] == pytest.approx(sum(p == y for p, y in zip(predicted, labels)) / len(labels), abs=1e-12)
    assert len(reply.body) > 1024 * 1024  # the response is larger than the transcoder's default cap too


def grpcurl(suite, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GRPCURL), "-plaintext", "-H", f"x-api-key: {suite.settings.api_key}", *args],
                          capture_output=True, text=True, timeout=30)


def test_grpcurl_lists_and_calls_through_the_gateway(suite):
    listed = grpcurl(suite, suite.gateway.address, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService"} <= services
    token = suite.admin_token()
    called = grpcurl(suite, "-H", f"authorization: Bearer {token}", "-d", "{}", suite.gateway.address,
                     "churn.v1.MonitoringService/GetCanaryWeight")
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {}  # weight 0: grpcurl prints no zero values
    refused = subprocess.run([str(GRPCURL), "-plaintext", suite.gateway.address, "list"], capture_output=True,
                             text=True, timeout=30)
    assert refused.returncode == 1 and "code = Unauthenticated" in refused.stderr, refused.stderr  # no API key


def test_cors_preflight_and_healthz(suite):
    origin = suite.settings.cors_allowed_origins[0]
    preflight = suite.rest("OPTIONS", "/v1/predict", key=None, headers={
        "origin": origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type,x-api-key"})
    assert preflight.status == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "x-api-key" in preflight.headers["access-control-allow-headers"]
    assert preflight.headers["access-control-allow-credentials"] == "true"
    other = suite.rest("OPTIONS", "/v1/predict", key=None, headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in other.headers
    health = suite.rest("GET", "/healthz", key=None)
    assert health.status == 200
    assert health.json()["status"] == "SERVING"  # Envoy's view per upstream, from monitoring (issue 13)
    assert {health.json()["upstreams"][name] for name in ("auth", "monitoring", "inference_production")} == {"HEALTHY"}


def test_access_log_is_json_with_the_request_id(suite, customers):
    reply = suite.rest("GET", "/v1/canary", token=suite.admin_token())
    request_id = reply.headers["x-request-id"]
    assert request_id
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in suite.gateway.logs().splitlines() if line.startswith("{")]
        mine = [e for e in entries if e.get("request_id") == request_id]
        if mine:
            break
        time.sleep(0.2)
    assert mine, "no JSON access-log line for the request"
    entry = mine[0]
    assert entry["route"].startswith("MonitoringService_GetCanaryWeight") and entry["status"] == 200
    assert entry["user"] == "admin" and entry["role"] == "admin"  # claim headers from jwt_authn, for logs
    assert entry["upstream_cluster"] == "monitoring" and entry["path"] == "/v1/canary"


def test_healthz_follows_the_upstreams(suite, customers):
    """/healthz is Envoy's view of auth, monitoring and inference production (served by monitoring): it turns 503 when
    production is down, and predictions at weight 0 are not silently served by staging (no fallback that way)."""
    from tests.harness import ServiceProcess

    production = suite.services["production"]
    production.kill()
    try:
        suite.gateway.wait_healthy(["inference_production"], healthy=False)
        assert suite.rest("GET", "/healthz", key=None).status == 503
    finally:
        restarted = ServiceProcess("inference_production", "services.inference",
                                   dict(production.env, INFERENCE_PRODUCTION_PORT=str(production.port)), suite.workdir)
        suite.services["production"] = restarted.wait_ready(120)
        suite.gateway.wait_healthy(["inference_production"], timeout=30)
    assert suite.rest("GET", "/healthz", key=None).status == 200
    _, inference, _ = suite.stubs()
    reply = inference.Predict(inference_pb2.PredictRequest(customer=customers[0]),
                              metadata=suite.md(suite.service_token), timeout=10)
    assert reply.prediction.model.alias == "production"
