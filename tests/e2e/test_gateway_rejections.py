"""Rejected at the gateway: each with the right status and no call reaching the service (its
`churn_grpc_requests_total` on the /metrics side port does not move)."""
from __future__ import annotations

import time

import grpc
import pytest

from churn.v1 import auth_pb2, inference_pb2, monitoring_pb2
from gateway import names
from tests.tokens import LocalKeys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def agent_token(suite):
    return suite.approved_agent("rejected")[2]


@pytest.fixture(scope="module")
def foreign_token(suite):
    """Right issuer, audience, claims and kid shape, signed by a key auth never published."""
    return LocalKeys(kid="20990101-deadbeef").mint(subject="admin", role="admin")


def expired_token(suite) -> str:
    delay = suite.expiring_token_exp + names.JWT_CLOCK_SKEW_SECONDS + 1 - time.time()
    if delay > 0:
        time.sleep(delay)
    return suite.expiring_token


CASES = {
    # name: (call builder, expected gRPC code, expected HTTP status for REST, service metered)
    "no token": ("predict", lambda s, t: s.md(None), grpc.StatusCode.UNAUTHENTICATED, 401),
    "expired token": ("predict", lambda s, t: s.md(expired_token(s)), grpc.StatusCode.UNAUTHENTICATED, 401),
    "foreign key": ("predict", lambda s, t: s.md(t["foreign"]), grpc.StatusCode.UNAUTHENTICATED, 401),
    "malformed token": ("predict", lambda s, t: s.md("not.a.jwt"), grpc.StatusCode.UNAUTHENTICATED, 401),
    "agent on admin route": ("explain", lambda s, t: s.md(t["agent"]), grpc.StatusCode.PERMISSION_DENIED, 403),
    "agent on ops route with ops key": ("set_weight", lambda s, t: s.md(t["agent"], key="ops"),
                                        grpc.StatusCode.PERMISSION_DENIED, 403),
    "missing api key": ("predict", lambda s, t: s.md(t["agent"], key=None), grpc.StatusCode.UNAUTHENTICATED, 401),
    "wrong api key": ("predict", lambda s, t: s.md(t["agent"], key="not-the-key"), grpc.StatusCode.UNAUTHENTICATED,
                      401),
    "client key on ops route": ("set_weight", lambda s, t: s.md(t["admin"], key="client"),
                                grpc.StatusCode.PERMISSION_DENIED, 403),
    "forged role header": ("explain", lambda s, t: s.md(t["agent"], x_jwt_role="admin"),
                           grpc.StatusCode.PERMISSION_DENIED, 403),
    "pin header without ops key": ("predict", lambda s, t: s.md(t["service"], x_churn_alias="staging"),
                                   grpc.StatusCode.PERMISSION_DENIED, 403),
}
TARGETS = {
    "predict": ("production", "Predict", "/v1/predict"),
    "explain": ("production", "Explain", "/v1/explain"),
    "set_weight": ("monitoring", "SetCanaryWeight", "/v1/canary"),
}


def _grpc_call(suite, target, metadata, customers):
    _, inference, monitoring = suite.stubs()
    if target == "predict":
        return inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=metadata, timeout=10)
    if target == "explain":
        return inference.Explain(inference_pb2.ExplainRequest(customers=customers[:1]), metadata=metadata, timeout=10)
    return monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=50), metadata=metadata,
                                      timeout=10)


@pytest.mark.parametrize("case", list(CASES))
def test_rejected_at_the_gateway(suite, customers, agent_token, foreign_token, case):
    target, metadata_for, code, http_status = CASES[case]
    service, method, rest_path = TARGETS[target]
    cluster = "monitoring" if service == "monitoring" else "inference_production"
    tokens = {"agent": agent_token, "admin": suite.admin_token(), "foreign": foreign_token,
              "service": suite.service_token}
    metadata = metadata_for(suite, tokens)
    before = suite.rpc_count(service, method), suite.gateway.stat(f"cluster.{cluster}.upstream_rq_total")
    with pytest.raises(grpc.RpcError) as rejected:
        _grpc_call(suite, target, metadata, customers)
    assert rejected.value.code() == code, rejected.value.details()

    headers = {k: v for k, v in metadata}
    body = {"percent": 50} if target == "set_weight" else {"customer": {"customer_id": "x"}}
    reply = suite.rest("POST", rest_path, body, key=None, headers=headers)
    assert reply.status == http_status, reply.body
    after = suite.rpc_count(service, method), suite.gateway.stat(f"cluster.{cluster}.upstream_rq_total")
    assert after == before, f"{case}: a call reached {service}"


def test_the_same_calls_pass_with_the_right_credentials(suite, customers, agent_token):
    """The control for the table above: the service's counter does move when the gateway lets a call through."""
    before = suite.rpc_count("production", "Predict")
    _grpc_call(suite, "predict", suite.md(agent_token), customers)
    assert suite.rpc_count("production", "Predict") == before + 1
    before = suite.rpc_count("monitoring", "SetCanaryWeight")
    upstream = suite.gateway.stat("cluster.monitoring.upstream_rq_total")
    admin = suite.admin_token()
    current = suite.stubs()[2].GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=suite.md(admin),
                                               timeout=5).percent
    suite.stubs()[2].SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=current),
                                     metadata=suite.md(admin, key="ops"), timeout=5)
    assert suite.rpc_count("monitoring", "SetCanaryWeight") == before + 1
    # health checks (every second) must not move the counter the tests rely on: wait for two of them, then count
    checks = suite.gateway.stat("cluster.monitoring.health_check.attempt")
    deadline = time.monotonic() + 10
    while suite.gateway.stat("cluster.monitoring.health_check.attempt") < checks + 2:
        assert time.monotonic() < deadline, "Envoy stopped health-checking monitoring"
        time.sleep(0.1)
    assert suite.gateway.stat("cluster.monitoring.upstream_rq_total") == upstream + 2  # Get + Set


def test_internal_rpc_is_not_reachable_from_outside(suite):
    """Inference's shipper calls RecordPredictions directly all along, so the evidence is Envoy's: nothing went
    upstream to monitoring."""
    before = suite.gateway.stat("cluster.monitoring.upstream_rq_total")
    _, _, monitoring = suite.stubs()
    with pytest.raises(grpc.RpcError) as rejected:
        monitoring.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(), metadata=suite.md(suite.service_token),
                                     timeout=5)
    assert rejected.value.code() == grpc.StatusCode.UNIMPLEMENTED
    reply = suite.rest("POST", "/v1/internal/predictions:record", {"records": []}, token=suite.service_token)
    assert reply.status == 404
    assert suite.gateway.stat("cluster.monitoring.upstream_rq_total") == before


def test_public_routes_need_no_token_but_a_key(suite):
    auth, _, _ = suite.stubs()
    before = suite.rpc_count("auth", "Login")
    with pytest.raises(grpc.RpcError) as no_key:
        auth.Login(auth_pb2.LoginRequest(username="admin", password=suite.admin_password), metadata=[], timeout=5)
    assert no_key.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert suite.rpc_count("auth", "Login") == before
    assert auth.Login(auth_pb2.LoginRequest(username="admin", password=suite.admin_password), metadata=suite.md(),
                      timeout=5).access_token
    assert suite.rpc_count("auth", "Login") == before + 1
