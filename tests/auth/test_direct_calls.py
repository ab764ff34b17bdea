"""Issue 13 item 10 at auth: login on auth's own port had no rate limit at all. Calls that bypass the gateway (no
valid `x-churn-gateway` stamp) are limited per peer address by `DIRECT_AUTH_RATE_PER_MINUTE`; calls Envoy forwards
are not limited again (Envoy already limited the real client, and every one of them comes from Envoy's address)."""
from __future__ import annotations

import grpc
import pytest

from churn.v1 import auth_pb2, auth_pb2_grpc
from services.common.direct_calls import GATEWAY_HEADER, PeerRateLimit, peer_host
from services.common.errors import ResourceExhausted
from tests.auth.conftest import auth_settings, start_auth


@pytest.fixture
def limited(tmp_path):
    settings = auth_settings(tmp_path, f"sqlite:///{tmp_path / 'users.db'}", DIRECT_AUTH_RATE_PER_MINUTE="3",
                             GATEWAY_SECRET="the-gateway-secret")
    app, host, bound = start_auth(settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
    yield bound, auth_pb2_grpc.AuthServiceStub(channel)
    channel.close()
    host.stop(0)
    app.close()


def login(stub, settings, *extra):
    return stub.Login(auth_pb2.LoginRequest(username="nobody", password="Wrong-password-1"),
                      metadata=(("x-api-key", settings.api_key), *extra), timeout=10)


def test_direct_login_is_limited_per_peer(limited):
    settings, stub = limited
    codes = []
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as refused:
            login(stub, settings)
        codes.append(refused.value.code())
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    with pytest.raises(grpc.RpcError) as refused:  # a forged stamp is just a direct call
        login(stub, settings, (GATEWAY_HEADER, "guess"))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry in" in refused.value.details()


def test_calls_stamped_by_the_gateway_are_not_limited_again(limited):
    settings, stub = limited
    for _ in range(8):
        with pytest.raises(grpc.RpcError) as refused:
            login(stub, settings, (GATEWAY_HEADER, settings.gateway_secret))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_bucket_refills_and_tracks_hosts_not_ports():
    now = [0.0]
    limit = PeerRateLimit(per_minute=2, clock=lambda: now[0])
    limit.check("ipv4:10.0.0.1:1000")
    limit.check("ipv4:10.0.0.1:1001")
    with pytest.raises(ResourceExhausted):
        limit.check("ipv4:10.0.0.1:1002")
    limit.check("ipv4:10.0.0.2:1000")  # another host has its own bucket
    now[0] = 30.0  # one token back after 30 s at 2/min
    limit.check("ipv6:[::1]:5") or limit.check("ipv4:10.0.0.1:9")
    assert peer_host("ipv6:[::1]:5555") == "ipv6:[::1]" and peer_host("unix:/tmp/x") == "unix:/tmp/x"
