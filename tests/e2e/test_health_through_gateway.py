"""Issue 13 item 12 through a real Envoy: grpc.health.v1.Health/Check for each service at :8080 (it was
UNIMPLEMENTED, "no such route"), Health/List answered (it was advertised but UNIMPLEMENTED), and /healthz as JSON with
one entry per upstream."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration
SERVICES = ("churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService",
            "inference.GRPCInferenceService", "")


@pytest.mark.parametrize("service", SERVICES)
def test_health_check_through_the_gateway(suite, service):
    stub = health_pb2_grpc.HealthStub(suite.channel())
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), metadata=suite.md(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_health_list_and_unknown_service(suite):
    stub = health_pb2_grpc.HealthStub(suite.channel())
    listed = stub.List(health_pb2.HealthListRequest(), metadata=suite.md(), timeout=10)
    assert {name for name in SERVICES} <= set(listed.statuses)
    assert {listed.statuses[name].status for name in SERVICES} == {health_pb2.HealthCheckResponse.SERVING}
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Check(health_pb2.HealthCheckRequest(service="churn.v1.Nothing"), metadata=suite.md(), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


def test_healthz_is_json_per_upstream(suite):
    reply = suite.rest("GET", "/healthz", key=None)
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    body = reply.json()
    assert body["status"] == "SERVING"
    assert set(body["upstreams"]) >= {"auth", "monitoring", "inference_production", "inference_staging_hosts"}
