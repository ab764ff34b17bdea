"""The filters that Envoy calls only for some calls (gateway/names.py `only_with_header`), in the real Envoy with
nothing behind its clusters: the rate-limit Lua still rounds a 429's wait, and the two access loggers (gRPC callers
read `%GRPC_STATUS%`, everyone else the status Lua's metadata) write exactly one line for every kind of call."""
from __future__ import annotations

import http.client
import time

import pytest

from services.common.settings import Settings
from tests.gateway.live_envoy import LiveEnvoy
from tests.gateway.test_render import GRPC, live_env

AUTH_PER_MINUTE = 5  # one token back every 12 s


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("live-envoy-on-demand")
    envoy = LiveEnvoy(Settings.from_env(dict(live_env(workdir), GATEWAY_PORT="0", ENVOY_ADMIN_PORT="0",
                                             AUTH_RATE_PER_MINUTE=str(AUTH_PER_MINUTE))), workdir)
    yield envoy
    envoy.stop()


def call(live, method: str, path: str, headers: dict[str, str], source: str = "127.0.0.1",
         body: bytes | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10, source_address=(source, 0))
    try:
        connection.request(method, path, body=body if body is not None else (b"" if method == "POST" else None),
                           headers=headers)
        reply = connection.getresponse()
        reply.read()
        return reply
    finally:
        connection.close()


def test_a_rate_limited_answer_gets_one_wait_rounded_up(live):
    """Envoy's own x-ratelimit-reset a second and more after the bucket emptied is below the configured fallback
    (12 s); only the Lua, called for answers with retry-after, makes both headers say the same rounded-up wait."""
    login = {"content-type": "application/json", "x-api-key": "client-key-1"}
    body = b'{"username": "someone", "password": "not-checked-here"}'
    source = "127.0.0.3"  # a bucket of its own (per client address)
    statuses = [call(live, "POST", "/v1/auth/token", login, source, body).status for _ in range(AUTH_PER_MINUTE)]
    assert 429 not in statuses  # no upstream: 503s, each spending a token
    time.sleep(1.5)
    limited = call(live, "POST", "/v1/auth/token", login, source, body)
    assert limited.status == 429
    assert limited.headers["retry-after"] == limited.headers["x-ratelimit-reset"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60 // AUTH_PER_MINUTE


def test_every_call_is_logged_once_by_the_logger_of_its_caller(live):
    grpc = dict(GRPC, **{"x-api-key": "client-key-1"})
    asked = [
        ("GET", "/healthz", {}, None),  # no content type at all
        ("GET", "/v1/nothing", {"x-api-key": "client-key-1"}, None),  # the transcoder's 404
        ("POST", "/v1/auth/token", {"content-type": "application/json", "x-api-key": "client-key-1"},
         b'{"username": "a", "password": "b"}'),  # transcoded, then no upstream
        ("POST", "/churn.v1.AuthService/Login", grpc, b""),  # a gRPC caller, no upstream
        ("POST", "/churn.v1.MonitoringService/GetCanaryWeight", grpc, b""),  # a gRPC caller without a token
    ]
    ids = [call(live, method, path, headers, "127.0.0.4", body).headers["x-request-id"]
           for method, path, headers, body in asked]
    deadline = time.monotonic() + 10
    while True:  # the access log is flushed every second
        lines = {request_id: [e for e in live._entries() if e["request_id"] == request_id] for request_id in ids}
        if all(lines.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [len(found) for found in lines.values()] == [1] * len(asked)
    statuses = [found[0]["grpc_status"] for found in lines.values()]
    # REST callers: no service answered, so no gRPC status; gRPC callers: the status Envoy sent them
    assert statuses == [None, None, None, "Unavailable", "Unauthenticated"]
