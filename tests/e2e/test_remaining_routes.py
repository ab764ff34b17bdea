"""The RPCs the journeys do not walk, each through the real Envoy: calls that work (REST and gRPC compared where
both exist); the caller-mistake table for every RPC is tests/e2e/test_caller_mistakes.py."""
from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import json_format

from churn.v1 import common_pb2, inference_pb2, monitoring_pb2
from tests.e2e.conftest import TELCO_CSV
from tests.e2e.test_flows import as_json, wait_feedback_matched

pytestmark = pytest.mark.integration


def customer_json(customer: common_pb2.Customer) -> dict:
    return json_format.MessageToDict(customer, preserving_proto_field_name=True)


def test_verify_session_and_list_users(suite):
    admin = suite.admin_token()
    session = suite.rest("GET", "/v1/auth/session", token=admin)
    assert session.status == 200, session.body
    assert session.json()["username"] == "admin" and session.json()["role"] == "ROLE_ADMIN"
    assert suite.rest("GET", "/v1/auth/session").status == 401

    users = suite.rest("GET", "/v1/users", token=admin, key="ops")
    assert users.status == 200, users.body
    assert "admin" in {user["username"] for user in users.json()["users"]}
    waiting = f"pending-{uuid.uuid4().hex[:8]}"
    assert suite.rest("POST", "/v1/auth/register", {"username": waiting, "password": "Str0ng-passw0rd"}).status == 200
    pending = suite.rest("GET", "/v1/users?pending_only=true", token=admin, key="ops").json()["users"]
    assert waiting in {user["username"] for user in pending} and "admin" not in {u["username"] for u in pending}
    assert all(user["approved"] is False for user in pending)


def test_predict_batch_over_rest_names_the_bad_row(suite, customers):
    _, _, agent = suite.approved_agent("batch")
    rows = [customer_json(c) for c in customers[:2]]
    reply = suite.rest("POST", "/v1/predict:batch", {"customers": rows}, token=agent)
    assert reply.status == 200, reply.body
    assert [p["customer_id"] for p in reply.json()["predictions"]] == [c.customer_id for c in customers[:2]]

    del rows[1]["contract"]
    bad = suite.rest("POST", "/v1/predict:batch", {"customers": rows}, token=agent)
    assert bad.status == 400 and b"customers[1].contract" in bad.body, bad.body


def test_stream_predict_through_the_gateway_keeps_going_after_a_bad_message(suite, customers):
    _, inference, _ = suite.stubs()
    broken = common_pb2.Customer()
    broken.CopyFrom(customers[2])
    broken.ClearField("tenure")
    messages = [inference_pb2.StreamPredictRequest(message_id=str(i), customer=c)
                for i, c in enumerate([customers[0], broken, customers[1]])]
    answers = list(inference.StreamPredict(iter(messages), metadata=suite.md(suite.service_token), timeout=30))
    assert [a.message_id for a in answers] == ["0", "1", "2"]
    assert answers[0].prediction.customer_id == customers[0].customer_id
    assert answers[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "tenure" in answers[1].error.message
    assert answers[2].prediction.customer_id == customers[1].customer_id


def test_reload_model_goes_to_the_named_alias_only(suite):
    admin = suite.admin_token()
    reloaded = suite.rest("POST", "/v1/model:reload", {"alias": "staging"}, token=admin, key="ops",
                          headers={"x-churn-alias": "staging"})
    assert reloaded.status == 200, reloaded.body
    assert reloaded.json()["current"]["alias"] == "staging" and reloaded.json()["changed"] is False
    # without the pin the call reaches production, which refuses to reload another alias
    refused = suite.rest("POST", "/v1/model:reload", {"alias": "staging"}, token=admin, key="ops")
    assert refused.status == 400 and b"alias" in refused.body, refused.body
    assert suite.rest("POST", "/v1/model:reload", {}, token=admin, key="client").status == 403


def test_update_metrics_rest_equals_grpc(suite, customers, production_reference):
    """After a prediction of the production version is logged, UpdateMetrics names that version; REST and gRPC
    (asked back to back, nothing logged in between) give the same reply."""
    _, inference, monitoring = suite.stubs()
    agent = suite.approved_agent("metrics")[2]
    predicted = inference.Predict(inference_pb2.PredictRequest(customer=customers[3]), metadata=suite.md(agent),
                                  timeout=10).prediction
    wait_feedback_matched(lambda pid: as_json(monitoring.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(
        rows=[monitoring_pb2.FeedbackRow(prediction_id=pid, churned=True)]), metadata=suite.md(agent), timeout=10)),
        predicted.prediction_id)
    admin = suite.admin_token()
    updated = suite.rest("POST", "/v1/monitoring/metrics:update", {}, token=admin, key="ops")
    assert updated.status == 200, updated.body
    by_grpc = monitoring.UpdateMetrics(monitoring_pb2.UpdateMetricsRequest(), metadata=suite.md(admin, key="ops"),
                                       timeout=60)
    assert updated.json() == as_json(by_grpc)
    production = [m for m in by_grpc.models if m.model_version == production_reference.version]
    assert len(production) == 1 and production[0].predictions >= 1 and production[0].labelled >= 1


def test_model_versions_name_both_aliases(suite, production_reference):
    versions = suite.rest("GET", "/v1/models/versions", token=suite.admin_token())
    assert versions.status == 200, versions.body
    by_alias = {alias: version["version"] for version in versions.json()["versions"] for alias in version["aliases"]}
    assert set(by_alias) == {"production", "staging"} and by_alias["production"] == production_reference.version
    assert all(v["training_metrics"]["roc_auc"] > 0.8 for v in versions.json()["versions"])


def test_upload_training_data_as_raw_csv(suite):
    admin = suite.admin_token()
    lines = TELCO_CSV.read_bytes().splitlines()
    body = b"\n".join(lines[:201]) + b"\n"
    uploaded = suite.rest("POST", "/v1/data/training", body, token=admin, key="ops",
                          headers={"content-type": "text/csv"})
    assert uploaded.status == 200, uploaded.body
    assert uploaded.json()["rows"] == 200 and uploaded.json()["dataset_id"]

    header = lines[0].split(b",")
    without_churn = b"\n".join(b",".join(line.split(b",")[:len(header) - 1]) for line in lines[:11]) + b"\n"
    refused = suite.rest("POST", "/v1/data/training", without_churn, token=admin, key="ops",
                         headers={"content-type": "text/csv"})
    assert refused.status == 400 and b"Churn" in refused.body, refused.body
