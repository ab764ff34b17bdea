"""`python -m services.monitoring` as a real process (port 0, PORT_FILE): SERVING health for "" and the service,
reflection lists it, /metrics answers, and SIGTERM stops it cleanly."""
from __future__ import annotations

import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.monitoring.app import SERVICE_NAME
from tests.harness import ServiceProcess
from tests.monitoring.conftest import free_port


def test_process_serves_health_reflection_and_metrics(suite_env, tmp_path):
    # its own data folder and a dead Envoy admin port: the process must never touch another Envoy's weight
    env = dict(suite_env, DATA_DIR=str(tmp_path / "var"), ENVOY_ADMIN_PORT=str(free_port()))
    process = ServiceProcess("monitoring", "services.monitoring", env, tmp_path)
    try:
        process.wait_ready(timeout=90)
        with grpc.insecure_channel(process.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE_NAME):
                reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
            assert SERVICE_NAME in services and "grpc.health.v1.Health" in services
        with urllib.request.urlopen(f"http://127.0.0.1:{process.http_port}/metrics", timeout=5) as response:
            assert b"churn_monitoring_canary_percent" in response.read()
    finally:
        code = process.stop()
    assert code == 0, process.logs()[-3000:]
