"""The shared bootstrap on a real server (port 0): API keys, tokens and roles from the access table, error
mapping with BadRequest details, INTERNAL only for our own bugs, health, reflection, graceful stop."""
import threading
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from churn.v1 import inference_pb2, inference_pb2_grpc
from services.common import identity
from services.common.access import service_names
from services.common.errors import InvalidInput, NotReady, Unauthenticated
from services.common.identity import current_caller
from services.common.interceptor import ServiceInterceptor
from services.common.server import start_server
from services.common.settings import Settings
from tests.clock import OffsetClock
from tests.tokens import LocalKeys

CLIENT_KEY, OPS_KEY = "client-key-1", "ops-key-1"


class FakeInference(inference_pb2_grpc.InferenceServiceServicer):
    """Only what the bootstrap needs to be exercised; behaviour chosen by the request's alias field."""

    def __init__(self):
        self.calls = 0
        self.release = threading.Event()

    def GetModelInfo(self, request, context):
        self.calls += 1
        if request.alias == "bad":
            raise InvalidInput("alias", "must be production or staging")
        if request.alias == "down":
            raise NotReady("model not loaded")
        if request.alias == "bug":
            raise KeyError("oops")
        if request.alias == "slow":
            self.release.wait(5)
        caller = current_caller()
        return inference_pb2.GetModelInfoResponse(run_id=f"{caller.subject}:{caller.role}")

    def ReloadModel(self, request, context):
        return inference_pb2.ReloadModelResponse(changed=True)


@pytest.fixture()
def served(tmp_path):
    keys = LocalKeys()
    # a folder of the test's own: the server makes its data folder 0700 (DATA_DIR=/tmp once locked /tmp for all)
    settings = Settings.from_env({"API_KEY": CLIENT_KEY, "OPS_API_KEY": OPS_KEY, "DATA_DIR": str(tmp_path)})
    servicer = FakeInference()
    host = start_server(
        settings, port=0, http_port=0,
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        service_names=service_names(inference_pb2), interceptor=ServiceInterceptor(keys.verifier(), CLIENT_KEY, OPS_KEY))
    channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
    yield host, servicer, keys, channel
    channel.close()
    servicer.release.set()
    host.stop(0)


def test_a_second_server_cannot_take_a_port_a_server_listens_on(served, tmp_path):
    """Without SO_REUSEPORT the bind fails; with it (grpc-python's default) it succeeded and the two sockets shared
    the port's connections — another worker's Envoy listening there lost some of its callers."""
    host = served[0]
    settings = Settings.from_env({"API_KEY": CLIENT_KEY, "OPS_API_KEY": OPS_KEY, "DATA_DIR": str(tmp_path / "b")})
    with pytest.raises(OSError, match=f"cannot bind 127.0.0.1:{host.port}"):
        start_server(settings, port=host.port, http_port=None, register=lambda server: None, service_names=[],
                     interceptor=ServiceInterceptor(LocalKeys().verifier(), CLIENT_KEY, OPS_KEY))


def _call(channel, alias="", key=CLIENT_KEY, token=None, method="GetModelInfo"):
    stub = inference_pb2_grpc.InferenceServiceStub(channel)
    metadata = [("x-api-key", key)] if key else []
    if token:
        metadata.append(("authorization", f"Bearer {token}"))
    request = inference_pb2.GetModelInfoRequest(alias=alias) if method == "GetModelInfo" else \
        inference_pb2.ReloadModelRequest()
    return getattr(stub, method)(request, metadata=metadata, timeout=5)


def _code(fn):
    with pytest.raises(grpc.RpcError) as caught:
        fn()
    return caught.value.code(), caught.value.details()


def test_verified_caller_reaches_the_servicer(served):
    _, _, keys, channel = served
    assert _call(channel, token=keys.mint("alice", "agent")).run_id == "alice:agent"


@pytest.mark.parametrize("key,expected", [(None, grpc.StatusCode.UNAUTHENTICATED),
                                          ("nope", grpc.StatusCode.UNAUTHENTICATED)])
def test_api_key_is_required(served, key, expected):
    _, servicer, keys, channel = served
    code, details = _code(lambda: _call(channel, key=key, token=keys.mint()))
    assert code == expected and "API key" in details
    assert servicer.calls == 0


def test_ops_route_refuses_the_client_key_and_agents(served):
    _, _, keys, channel = served
    admin = keys.mint("root", "admin")
    assert _code(lambda: _call(channel, key=CLIENT_KEY, token=admin, method="ReloadModel"))[0] == \
        grpc.StatusCode.PERMISSION_DENIED
    code, details = _code(lambda: _call(channel, key=OPS_KEY, token=keys.mint(), method="ReloadModel"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "agent" in details
    assert _call(channel, key=OPS_KEY, token=admin, method="ReloadModel").changed


def test_missing_and_foreign_tokens_are_unauthenticated(served):
    _, servicer, _, channel = served
    assert _code(lambda: _call(channel))[0] == grpc.StatusCode.UNAUTHENTICATED
    code, details = _code(lambda: _call(channel, token=LocalKeys().mint()))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert servicer.calls == 0


def test_invalid_input_carries_bad_request_details(served):
    _, _, keys, channel = served
    with pytest.raises(grpc.RpcError) as caught:
        _call(channel, alias="bad", token=keys.mint())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "alias"


@pytest.mark.internal_expected
def test_domain_errors_map_and_bugs_become_internal_with_request_id(served):
    _, _, keys, channel = served
    assert _code(lambda: _call(channel, alias="down", token=keys.mint()))[0] == grpc.StatusCode.UNAVAILABLE
    code, details = _code(lambda: _call(channel, alias="bug", token=keys.mint()))
    assert code == grpc.StatusCode.INTERNAL and "request id" in details and "oops" not in details


def test_health_reflects_readiness_and_reflection_names_services(served):
    host, _, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    service = "churn.v1.InferenceService"
    assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
        health_pb2.HealthCheckResponse.SERVING
    host.set_serving(False)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {service, "grpc.health.v1.Health"} <= names


def test_stop_lets_in_flight_calls_finish(served):
    host, servicer, keys, channel = served
    result = {}

    def slow_call():
        result["reply"] = _call(channel, alias="slow", token=keys.mint())

    caller = threading.Thread(target=slow_call)
    caller.start()
    while servicer.calls == 0:
        time.sleep(0.01)
    stopper = threading.Thread(target=host.stop, args=(5,))
    stopper.start()
    time.sleep(0.2)
    servicer.release.set()
    caller.join(5)
    stopper.join(5)
    assert result["reply"].run_id == "alice:agent"


def test_a_watched_server_serves_on_until_its_health_checker_saw_it_stop(served):
    """SIGTERM's first step (services/common/server.py): NOT_SERVING, calls still answered, until the health checker
    has asked 3 more times; a server nobody checks does not wait."""
    host, servicer, keys, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    assert host.health.wait_until_seen(3, timeout=10) is False  # never checked: not behind a health checker
    health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    host.set_serving(False)
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(host.health.wait_until_seen(3, timeout=10)))
    waiter.start()
    checks = 0
    while waiter.is_alive() and checks < 50:
        assert _call(channel, token=keys.mint()).run_id == "alice:agent"
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        checks += 1
        time.sleep(0.05)
    waiter.join(5)
    assert seen == [True] and checks >= 3


def test_remembered_tokens_still_expire_and_still_get_the_session_check(monkeypatch):
    clock = OffsetClock(monkeypatch, identity)
    keys = LocalKeys()
    checked = []
    verifier = keys.verifier(session_check=lambda caller: checked.append(caller.subject))
    token = keys.mint("bob", "agent", ttl=60)
    assert verifier.verify(token).subject == "bob"
    clock.advance(59)
    assert verifier.verify(token).subject == "bob"
    assert checked == ["bob", "bob"]
    clock.advance(1)
    with pytest.raises(Unauthenticated, match="expired"):
        verifier.verify(token)
