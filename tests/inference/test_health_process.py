"""Health is NOT_SERVING (and the Open Inference Protocol not ready) until the model is loaded; reflection lists
InferenceService and GRPCInferenceService; `python -m services.inference` reaches SERVING as a process and drains
on SIGTERM."""
from __future__ import annotations

import dataclasses
import threading
import urllib.request

import grpc
import grpc_predict_v2_pb2 as oip_pb
import grpc_predict_v2_pb2_grpc
import pytest
from churn.v1 import inference_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from services.common import telco_csv
from services.inference import app
from tests.harness import ServiceProcess
from tests.inference.conftest import TELCO_CSV, Client

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


class GatedRegistry:
    """The real registry, but loading waits for the test to open the gate."""

    def __init__(self, inner):
        self._inner = inner
        self.gate = threading.Event()

    def version_for(self, alias):
        return self._inner.version_for(alias)

    def load(self, version):
        assert self.gate.wait(60)
        return self._inner.load(version)


def test_not_serving_until_the_model_is_loaded(settings, keys, registry, tmp_path):
    gated = GatedRegistry(registry)
    parts = dataclasses.replace(app.build_parts(settings, "production", ship=False), registry=gated, port=0,
                                http_port=0, outbox_file=tmp_path / "o.db")
    inference = app.start(settings, keys.verifier(), parts)
    client = Client(f"127.0.0.1:{inference.port}", settings, keys)
    health = health_pb2_grpc.HealthStub(client.channel)
    oip = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(client.channel)
    model = oip_pb.ModelReadyRequest(name=settings.model_name)
    try:
        for service in ("", app.SERVICE_NAME, app.OPEN_INFERENCE_NAME):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
        md = client.metadata()
        assert oip.ServerLive(oip_pb.ServerLiveRequest(), metadata=md).live
        assert not oip.ServerReady(oip_pb.ServerReadyRequest(), metadata=md).ready
        assert not oip.ModelReady(model, metadata=md).ready
        with pytest.raises(grpc.RpcError) as error:
            oip.ModelMetadata(oip_pb.ModelMetadataRequest(name=settings.model_name), metadata=md)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        head = b"\n".join(TELCO_CSV.read_bytes().split(b"\n")[:3]) + b"\n"
        customer = telco_csv.parse_telco_csv(head, 10**6, 100).customers()[0]
        with pytest.raises(grpc.RpcError) as error:
            client.stub.Predict(inference_pb2.PredictRequest(customer=customer), metadata=client.metadata())
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        gated.gate.set()
        assert inference.wait_loaded(60)
        for service in ("", app.SERVICE_NAME, app.OPEN_INFERENCE_NAME):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
        assert oip.ServerReady(oip_pb.ServerReadyRequest(), metadata=md).ready
        assert oip.ModelReady(model, metadata=md).ready
        reply = client.stub.Predict(inference_pb2.PredictRequest(customer=customer), metadata=client.metadata())
        assert reply.prediction.model.alias == "production"
        services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
        assert {app.SERVICE_NAME, app.OPEN_INFERENCE_NAME, "grpc.health.v1.Health"} <= set(services)
    finally:
        gated.gate.set()
        client.close()
        inference.stop(0)


def test_the_process_reaches_serving_and_exports_metrics(trained_registry, tmp_path):
    process = ServiceProcess("inference-staging", "services.inference", dict(trained_registry, MODEL_ALIAS="staging"),
                             tmp_path)
    try:
        process.wait_ready(timeout=120)
        body = urllib.request.urlopen(f"http://127.0.0.1:{process.http_port}/metrics", timeout=5).read().decode()
        assert 'churn_inference_model_info{alias="staging",flavor="sklearn"' in body
        assert "churn_inference_outbox_backlog" in body
    finally:
        code = process.stop()
    assert code == 0, process.logs()[-3000:]
