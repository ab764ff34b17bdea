"""Rate limits on their own Envoy with the seed's limits: 5 logins a minute per client address (REST and gRPC share
the bucket), 10 predictions a minute per agent, a much higher class for service tokens."""
from __future__ import annotations

import grpc
import pytest

from churn.v1 import auth_pb2, inference_pb2
from gateway.rate_limits import token_seconds

pytestmark = pytest.mark.integration


def test_sixth_login_in_a_minute_is_limited_per_client(suite, limited_gateway):
    username, password, _ = suite.approved_agent("ratelimit")
    body = {"username": username, "password": password}
    auth, _, _ = suite.stubs(limited_gateway)
    statuses = [suite.rest("POST", "/v1/auth/token", body, gateway=limited_gateway).status for _ in range(3)]
    for _ in range(2):  # the same route, so gRPC spends the same bucket
        auth.Login(auth_pb2.LoginRequest(username=username, password=password), metadata=suite.md(), timeout=5)
    assert statuses == [200, 200, 200]
    before = suite.rpc_count("auth", "Login")

    limited = suite.rest("POST", "/v1/auth/token", body, gateway=limited_gateway)
    assert limited.status == 429
    # one wait in both headers: a bucket of 5 a minute has a token back within 12 s (Envoy refills continuously)
    assert limited.headers["retry-after"] == limited.headers["x-ratelimit-reset"]
    assert 1 <= int(limited.headers["retry-after"]) <= token_seconds(5) == 12
    assert limited.headers["x-ratelimit-limit"] == "5" and limited.headers["x-ratelimit-remaining"] == "0"
    with pytest.raises(grpc.RpcError) as exhausted:
        auth.Login(auth_pb2.LoginRequest(username=username, password=password), metadata=suite.md(), timeout=5)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert suite.rpc_count("auth", "Login") == before  # refused at the gateway

    # Another client address is unaffected; a forged X-Forwarded-For does not make a new client.
    other = suite.rest("POST", "/v1/auth/token", body, gateway=limited_gateway, source="127.0.0.2")
    assert other.status == 200, other.body
    forged = suite.rest("POST", "/v1/auth/token", body, gateway=limited_gateway,
                        headers={"x-forwarded-for": "203.0.113.9"})
    assert forged.status == 429


def test_predictions_are_limited_per_user_and_service_tokens_get_more(suite, limited_gateway, customers,
                                                                      production_reference):
    _, inference, _ = suite.stubs(limited_gateway)
    request = inference_pb2.PredictRequest(customer=customers[0])
    _, _, alice = suite.approved_agent("alice")
    _, _, bob = suite.approved_agent("bob")
    for i in range(10):
        if i % 2:
            assert suite.rest("POST", "/v1/predict", {"customer": {**_json(customers[0])}}, token=alice,
                              gateway=limited_gateway).status == 200
        else:
            inference.Predict(request, metadata=suite.md(alice), timeout=10)
    with pytest.raises(grpc.RpcError) as exhausted:
        inference.Predict(request, metadata=suite.md(alice), timeout=10)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    refused = suite.rest("POST", "/v1/predict", {"customer": _json(customers[0])}, token=alice,
                         gateway=limited_gateway)
    assert refused.status == 429
    # the agents' bucket (10 a minute, a token every 6 s) answers, not the service tokens' bucket of the same route
    assert refused.headers["x-ratelimit-limit"] == "10" and refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["retry-after"] == refused.headers["x-ratelimit-reset"]
    assert 1 <= int(refused.headers["retry-after"]) <= token_seconds(10) == 6
    # Per user: bob still has his ten; a service token is far above the agents' class.
    bobs = inference.Predict(request, metadata=suite.md(bob), timeout=10).prediction
    assert bobs.probability == pytest.approx(float(production_reference.probability([customers[0]])[0]), abs=1e-6)
    for _ in range(30):
        inference.Predict(request, metadata=suite.md(suite.service_token), timeout=10)


def _json(customer) -> dict:
    from google.protobuf import json_format

    return json_format.MessageToDict(customer, preserving_proto_field_name=True)
