"""services/common/health.py on its own: Envoy's /clusters JSON read as per-upstream health, Check/List answering
for services of other processes from that view, /healthz's 200/503 rule."""
from __future__ import annotations

import json

from grpc_health.v1 import health_pb2

from gateway import names
from services.common.health import CLUSTER_SERVICES, Health, cluster_health


def clusters(**healthy: bool) -> dict:
    def host(ok: bool) -> dict:
        return {"health_status": {"eds_health_status": "HEALTHY", **({} if ok else {"failed_active_health_check": True})}}
    return {"cluster_statuses": [{"name": name, "host_statuses": [host(ok)]} for name, ok in healthy.items()]
            + [{"name": "inference_staging"}]}  # the aggregate: no hosts of its own


class FakeView:
    def __init__(self, view):
        self.view = view

    def clusters(self):
        return self.view


def test_cluster_names_match_the_gateway():
    assert {service: cluster for cluster, services in CLUSTER_SERVICES.items()
            for service in services} == names.SERVICE_CLUSTERS


def test_envoy_clusters_read_as_health():
    view = cluster_health(clusters(auth=True, monitoring=True, inference_production=False))
    assert view == {"auth": True, "monitoring": True, "inference_production": False}


def test_check_and_list_answer_for_other_processes():
    servicer = Health(FakeView({"auth": True, "monitoring": True, "inference_production": False}))
    servicer.set("churn.v1.MonitoringService", health_pb2.HealthCheckResponse.SERVING)
    check = lambda name: servicer.Check(health_pb2.HealthCheckRequest(service=name), None).status  # noqa: E731
    assert check("churn.v1.AuthService") == health_pb2.HealthCheckResponse.SERVING
    assert check("churn.v1.InferenceService") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert check("inference.GRPCInferenceService") == health_pb2.HealthCheckResponse.NOT_SERVING
    listed = servicer.List(health_pb2.HealthListRequest(), None).statuses
    assert set(listed) == {"", "churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService",
                           "inference.GRPCInferenceService"}


def test_healthz_needs_auth_monitoring_and_production(monkeypatch):
    from services.common.health import EnvoyView

    view = EnvoyView("http://127.0.0.1:1")
    monkeypatch.setattr(view, "clusters", lambda: {"auth": True, "monitoring": True, "inference_production": True,
                                                   "inference_staging_hosts": False})
    status, content_type, body = view.healthz()
    assert status.startswith("200") and json.loads(body)["upstreams"]["inference_staging_hosts"] == "UNHEALTHY"
    monkeypatch.setattr(view, "clusters", lambda: {"auth": True})
    status, _, body = view.healthz()
    assert status.startswith("503") and json.loads(body)["upstreams"]["monitoring"] == "UNKNOWN"
