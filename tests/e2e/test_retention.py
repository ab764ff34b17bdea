"""SuggestRetention through the real Envoy: gRPC and REST give the same levers, the canary routes it like Predict
(weight and ops pin), it is limited like a prediction, and bad input is a 400 / INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from churn.v1 import common_pb2, inference_pb2, monitoring_pb2

pytestmark = pytest.mark.integration


def as_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def test_grpc_and_rest_give_the_same_levers(suite, customers):
    _, _, token = suite.approved_agent("levers")
    _, inference, _ = suite.stubs()
    request = inference_pb2.SuggestRetentionRequest(customers=customers[:3], top_k=2)
    reply, call = inference.SuggestRetention.with_call(request, metadata=suite.md(token), timeout=20)
    assert dict(call.initial_metadata())["x-churn-served-by"] == "production"  # the suite's canary weight is 0
    assert reply.model.alias == "production" and reply.model.version
    assert [lv.customer_id for lv in reply.levers] == [c.customer_id for c in customers[:3]]
    first = reply.levers[0]  # 7590-VHVEG: month-to-month, electronic check — there is always something to offer
    assert 1 <= len(first.single_changes) <= 2 and first.HasField("best_pair")
    assert all(s.probability < first.probability for s in first.single_changes)

    rest = suite.rest("POST", "/v1/retention:suggest",
                      {"customers": [as_json(c) for c in customers[:3]], "top_k": 2}, token=token)
    assert rest.status == 200, rest.body
    assert rest.headers["x-churn-served-by"] == "production"
    assert rest.json() == as_json(reply)


def test_the_canary_routes_it_like_predict(suite, customers):
    suite.gateway.wait_healthy(["inference_production", "inference_staging_hosts"])
    _, inference, monitoring = suite.stubs()
    request = inference_pb2.SuggestRetentionRequest(customers=customers[:1])
    pinned = inference.SuggestRetention(
        request, metadata=suite.md(suite.service_token, key="ops", x_churn_alias="staging"), timeout=20)
    assert pinned.model.alias == "staging"
    ops = suite.md(suite.admin_token(), key="ops")
    monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=100), metadata=ops, timeout=5)
    try:
        reply, call = inference.SuggestRetention.with_call(request, metadata=suite.md(suite.service_token),
                                                           timeout=20)
        assert reply.model.alias == dict(call.initial_metadata())["x-churn-served-by"] == "staging"
    finally:
        monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=0), metadata=ops, timeout=5)


def test_bad_input_names_the_field(suite, customers):
    _, _, token = suite.approved_agent("levers-bad")
    rest = suite.rest("POST", "/v1/retention:suggest", {"customers": [as_json(customers[0])], "top_k": 11},
                      token=token)
    assert rest.status == 400, rest.body
    assert "top_k" in rest.json()["message"]
    bad = common_pb2.Customer()
    bad.CopyFrom(customers[0])
    bad.ClearField("monthly_charges")
    _, inference, _ = suite.stubs()
    with pytest.raises(grpc.RpcError) as error:
        inference.SuggestRetention(inference_pb2.SuggestRetentionRequest(customers=[customers[1], bad]),
                                   metadata=suite.md(token), timeout=20)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "customers[1].monthly_charges" in error.value.details()
    empty = suite.rest("POST", "/v1/retention:suggest", {}, token=token)
    assert empty.status == 400 and "customers" in empty.json()["message"], empty.body


def test_it_is_in_the_prediction_rate_class(suite, limited_gateway, customers):
    """On the gateway with the seed's limits an agent gets 10 calls a minute, like Predict; REST and gRPC share it."""
    _, _, token = suite.approved_agent("levers-limit")
    _, inference, _ = suite.stubs(limited_gateway)
    request = inference_pb2.SuggestRetentionRequest(customers=customers[:1])
    for _ in range(5):
        inference.SuggestRetention(request, metadata=suite.md(token), timeout=20)
        assert suite.rest("POST", "/v1/retention:suggest", {"customers": [as_json(customers[0])]}, token=token,
                          gateway=limited_gateway).status == 200
    with pytest.raises(grpc.RpcError) as exhausted:
        inference.SuggestRetention(request, metadata=suite.md(token), timeout=20)
    assert exhausted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert suite.rest("POST", "/v1/retention:suggest", {"customers": [as_json(customers[0])]}, token=token,
                      gateway=limited_gateway).status == 429
