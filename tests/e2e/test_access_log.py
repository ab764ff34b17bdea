"""Envoy's access log after real REST and gRPC calls: the caller's own verb and path (not the transcoder's POST to
the gRPC path), and the gRPC status the service answered (not one guessed back from the HTTP status); when Envoy
answered itself, the status it sent a gRPC caller and null for a REST caller. Each line is found by the request id
the caller got back, and compared field by field."""
from __future__ import annotations

import json
import time

import grpc
import pytest
from google.protobuf import json_format

from churn.v1 import inference_pb2, monitoring_pb2

pytestmark = pytest.mark.integration
FIELDS = ("method", "path", "status", "grpc_status", "flags", "details")


def logged(gateway, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        for line in gateway.logs().splitlines():
            if line.startswith("{") and request_id in line:
                entry = json.loads(line)
                if entry["request_id"] == request_id:
                    return {key: entry[key] for key in FIELDS}
        assert time.monotonic() < deadline, f"no access-log line for {request_id}"
        time.sleep(0.2)


def rest_line(suite, method, path, body=None, gateway=None, **kw) -> tuple[int, dict]:
    reply = suite.rest(method, path, body, gateway=gateway, **kw)
    return reply.status, logged(gateway or suite.gateway, reply.headers["x-request-id"])


def grpc_line(suite, gateway, call, request, metadata) -> dict:
    try:
        _, done = call.with_call(request, metadata=metadata, timeout=20)
    except grpc.RpcError as error:  # a trailers-only answer: the id is among the trailers
        done = error
    metadata = dict(done.initial_metadata() or ()) | dict(done.trailing_metadata() or ())
    return logged(gateway or suite.gateway, metadata["x-request-id"])


def line(method, path, status, grpc_status, flags="-", details="via_upstream") -> dict:
    return dict(zip(FIELDS, (method, path, status, grpc_status, flags, details)))


def customer_json(customer) -> dict:
    return json_format.MessageToDict(customer, preserving_proto_field_name=True)


def test_rest_calls_are_logged_with_their_verb_path_and_the_services_status(suite, customers):
    agent = suite.approved_agent("logged")[2]
    admin = suite.admin_token()
    assert rest_line(suite, "GET", "/v1/models/versions", token=agent) == (
        200, line("GET", "/v1/models/versions", 200, "OK"))
    assert rest_line(suite, "GET", "/v1/feedback?limit=3", token=agent) == (
        200, line("GET", "/v1/feedback?limit=3", 200, "OK"))
    # the service refused it (INVALID_ARGUMENT → 400), and the transcoder refused one (no service answered)
    assert rest_line(suite, "POST", "/v1/predict", {"customer": customer_json(customers[0]) | {"tenure": -1}},
                     token=agent) == (400, line("POST", "/v1/predict", 400, "InvalidArgument"))
    assert rest_line(suite, "POST", "/v1/predict", {"customer": {"contract": "yearly"}}, token=agent) == (
        400, line("POST", "/v1/predict", 400, None, details="grpc_json_transcode_failure{INVALID_ARGUMENT}"))
    # NOT_FOUND from the service, and a path no RPC maps (the transcoder's 404)
    run = "/v1/models/training-runs/0123456789abcdef0123456789abcdef"
    assert rest_line(suite, "GET", run, token=admin, key="ops") == (404, line("GET", run, 404, "NotFound"))
    assert rest_line(suite, "GET", "/v1/nothing", token=agent) == (
        404, line("GET", "/v1/nothing", 404, None, details="early_grpc_json_transcode_failure{NOT_FOUND}"))
    # no token: jwt_authn answers; a wrong password: auth answers UNAUTHENTICATED
    assert rest_line(suite, "GET", "/v1/canary") == (
        401, line("GET", "/v1/canary", 401, None, details="jwt_authn_access_denied{Jwt_is_missing}"))
    assert rest_line(suite, "POST", "/v1/auth/token", {"username": "admin", "password": "wrong-password-1"}) == (
        401, line("POST", "/v1/auth/token", 401, "Unauthenticated"))


def test_grpc_calls_are_logged_with_the_status_the_caller_got(suite, customers):
    _, inference, monitoring = suite.stubs()
    agent = suite.approved_agent("logged-grpc")[2]
    weight = "/churn.v1.MonitoringService/GetCanaryWeight"
    assert grpc_line(suite, None, monitoring.GetCanaryWeight, monitoring_pb2.GetCanaryWeightRequest(),
                     suite.md(agent)) == line("POST", weight, 200, "OK")
    assert grpc_line(suite, None, monitoring.GetFeedbackData, monitoring_pb2.GetFeedbackDataRequest(limit=-1),
                     suite.md(agent)) == line("POST", "/churn.v1.MonitoringService/GetFeedbackData", 200,
                                              "InvalidArgument")
    assert grpc_line(suite, None, monitoring.GetCanaryWeight, monitoring_pb2.GetCanaryWeightRequest(),
                     suite.md()) == line("POST", weight, 200, "Unauthenticated",
                                         details="jwt_authn_access_denied{Jwt_is_missing}")
    internal = "/churn.v1.MonitoringService/RecordPredictions"
    assert grpc_line(suite, None, monitoring.RecordPredictions, monitoring_pb2.RecordPredictionsRequest(),
                     suite.md(agent)) == line("POST", internal, 200, "Unimplemented", details="direct_response")
    # a server stream: its status arrives in the trailers after the messages
    messages = [inference_pb2.StreamPredictRequest(message_id=str(i), customer=c) for i, c in enumerate(customers[:3])]
    stream = inference.StreamPredict(iter(messages), metadata=suite.md(suite.service_token), timeout=30)
    assert len(list(stream)) == 3
    assert logged(suite.gateway, dict(stream.initial_metadata())["x-request-id"]) == line(
        "POST", "/churn.v1.InferenceService/StreamPredict", 200, "OK")


def test_rate_limited_calls_are_logged_as_such(suite, limited_gateway, customers):
    """429 over REST (no gRPC status: Envoy answered a REST caller) and RESOURCE_EXHAUSTED over gRPC."""
    _, inference, _ = suite.stubs(limited_gateway)
    body = {"customer": customer_json(customers[0])}
    rest_agent, grpc_agent = suite.approved_agent("limited-rest")[2], suite.approved_agent("limited-grpc")[2]
    for _ in range(10):  # the seed's 10 predictions a minute per agent
        assert suite.rest("POST", "/v1/predict", body, token=rest_agent, gateway=limited_gateway).status == 200
        inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=suite.md(grpc_agent),
                          timeout=10)
    assert rest_line(suite, "POST", "/v1/predict", body, gateway=limited_gateway, token=rest_agent) == (
        429, line("POST", "/v1/predict", 429, None, flags="RL", details="local_rate_limited"))
    assert grpc_line(suite, limited_gateway, inference.Predict, inference_pb2.PredictRequest(customer=customers[0]),
                     suite.md(grpc_agent)) == line("POST", "/churn.v1.InferenceService/Predict", 200,
                                                   "ResourceExhausted", flags="RL", details="local_rate_limited")
