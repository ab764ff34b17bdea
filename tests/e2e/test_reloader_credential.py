"""Monitoring's own credential on the live suite: the `reloader` token the harness mints (as `make run` does, into
SECRETS_DIR/monitoring_token) makes an inference instance reload, directly and through Envoy — and is refused
everywhere else: it cannot predict, read or label data, approve users, move aliases or the weight, or feed the
prediction log."""
from __future__ import annotations

import secrets
import uuid

import grpc
import pytest

from churn.v1 import auth_pb2, common_pb2, inference_pb2, inference_pb2_grpc, monitoring_pb2, monitoring_pb2_grpc
from services.common import mlflow_config
from services.common import model_registry as R

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reloader(suite) -> str:
    return (suite.settings.secrets_dir / "monitoring_token").read_text().strip()


def test_the_reloader_token_reloads_an_instance_directly_and_through_envoy(suite, reloader):
    registry = R.ModelRegistry(mlflow_config.tracking_uri(suite.settings), suite.settings.model_name)
    direct = grpc.insecure_channel(suite.services["staging"].address)
    reply = inference_pb2_grpc.InferenceServiceStub(direct).ReloadModel(
        inference_pb2.ReloadModelRequest(alias="staging"), metadata=suite.md(reloader, key="ops"), timeout=120)
    assert reply.current.alias == "staging" and reply.current.version == registry.version_for(R.ALIAS_STAGING)
    through = suite.rest("POST", "/v1/model:reload", {"alias": "production"}, token=reloader, key="ops",
                         headers={"x-churn-alias": "production"})
    assert through.status == 200, through.body
    assert through.json()["current"]["version"] == registry.version_for(R.ALIAS_PRODUCTION), through.body
    session = suite.rest("GET", "/v1/auth/session", token=reloader)
    assert session.status == 200 and session.json()["role"] == "ROLE_RELOADER", session.body


def test_the_reloader_token_is_refused_everywhere_else(suite, reloader, customers):
    auth, inference, monitoring = suite.stubs()
    ops, client = suite.md(reloader, key="ops"), suite.md(reloader)
    victim, password = f"victim-{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_urlsafe(12)
    auth.Register(auth_pb2.RegisterRequest(username=victim, password=password), metadata=suite.md(), timeout=10)
    calls = {
        "Predict": lambda: inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=client,
                                             timeout=10),
        "ApproveUser": lambda: auth.ApproveUser(auth_pb2.ApproveUserRequest(username=victim, approve=True),
                                                metadata=ops, timeout=10),
        "Register as admin": lambda: auth.Register(auth_pb2.RegisterRequest(
            username=victim + "x", password=password, role=common_pb2.ROLE_ADMIN),
            metadata=client, timeout=10),
        "Promote": lambda: monitoring.Promote(monitoring_pb2.PromoteRequest(), metadata=ops, timeout=10),
        "SetCanaryWeight": lambda: monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=100),
                                                              metadata=ops, timeout=10),
        "ListPredictions": lambda: monitoring.ListPredictions(monitoring_pb2.ListPredictionsRequest(), metadata=ops,
                                                              timeout=10),
        "GetModelInfo": lambda: inference.GetModelInfo(inference_pb2.GetModelInfoRequest(), metadata=client,
                                                       timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, refused.value.details())
    # straight at the services too (they authorize themselves, whatever Envoy let through)
    direct_inference = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(
        suite.services["production"].address))
    direct_monitoring = monitoring_pb2_grpc.MonitoringServiceStub(grpc.insecure_channel(
        suite.services["monitoring"].address))
    for name, call in {
        "Predict": lambda: direct_inference.Predict(inference_pb2.PredictRequest(customer=customers[0]),
                                                    metadata=client, timeout=10),
        "RecordPredictions": lambda: direct_monitoring.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(),
                                                                         metadata=client, timeout=10),
        "Rollback": lambda: direct_monitoring.Rollback(monitoring_pb2.RollbackRequest(), metadata=ops, timeout=10),
    }.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, refused.value.details())
        assert "role 'reloader' may not call" in refused.value.details(), name
    pending = auth.ListUsers(auth_pb2.ListUsersRequest(pending_only=True),
                             metadata=suite.md(suite.admin_token(), key="ops"), timeout=10)
    assert victim in [u.username for u in pending.users]  # still unapproved
