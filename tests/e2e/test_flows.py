"""The user journey through the real Envoy, over gRPC and over REST: register → admin approves → login (bearer and
cookie) → predict → explain (admin) → feedback → drift report → canary weight; REST JSON equals the gRPC result."""
from __future__ import annotations

import json
import secrets
import time
import uuid

import grpc
import pytest
from google.protobuf import json_format

from churn.v1 import auth_pb2, common_pb2, inference_pb2, monitoring_pb2
from services.common import features

pytestmark = pytest.mark.integration


def as_json(message) -> dict:
    """The transcoder's print options: snake_case names, primitive zero values printed."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def wait_feedback_matched(submit, prediction_id: str, timeout: float = 20.0):
    """The prediction reaches monitoring through inference's outbox (asynchronous): retry until it is there."""
    deadline = time.monotonic() + timeout
    while True:
        reply = submit(prediction_id)
        if reply["matched"] == 1 or time.monotonic() > deadline:
            return reply
        time.sleep(0.3)


FEATURE_COLUMNS = 19  # the Telco CSV's columns but customerID and Churn: what drift compares


def test_grpc_journey(suite, customers, production_reference, canary_restored):
    auth, inference, monitoring = suite.stubs()
    username, password = f"grpc-{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_urlsafe(12)
    registered = auth.Register(auth_pb2.RegisterRequest(username=username, password=password), metadata=suite.md(),
                               timeout=10)
    assert registered.user.role == common_pb2.ROLE_AGENT
    assert not registered.user.approved
    with pytest.raises(grpc.RpcError) as unapproved:
        auth.Login(auth_pb2.LoginRequest(username=username, password=password), metadata=suite.md(), timeout=10)
    assert unapproved.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert unapproved.value.details() == f"user {username!r} is not approved yet; an admin must approve it first"

    admin = suite.admin_token()
    approved = auth.ApproveUser(auth_pb2.ApproveUserRequest(username=username, approve=True),
                                metadata=suite.md(admin, key="ops"), timeout=10)
    assert approved.user.approved
    login, call = auth.Login.with_call(auth_pb2.LoginRequest(username=username, password=password),
                                       metadata=suite.md(), timeout=10)
    agent = login.access_token
    assert any(k == "set-cookie" and "access_token=" in v and "HttpOnly" in v for k, v in call.initial_metadata())

    reply, call = inference.Predict.with_call(inference_pb2.PredictRequest(customer=customers[0], explain_top_k=3),
                                              metadata=suite.md(agent), timeout=10)
    prediction = reply.prediction
    reference = production_reference
    assert (prediction.model.alias, prediction.model.version) == ("production", reference.version)  # weight 0
    assert prediction.probability == pytest.approx(float(reference.probability([customers[0]])[0]), abs=1e-6)
    assert prediction.churn == (prediction.probability >= reference.threshold)
    assert dict(call.initial_metadata())["x-churn-served-by"] == "production"
    assert len(prediction.reasons) == 3

    explained = inference.Explain(inference_pb2.ExplainRequest(customers=customers[:2]), metadata=suite.md(admin),
                                  timeout=20)
    assert len(explained.explanations) == 2
    first = explained.explanations[0]
    assert first.base_value + sum(c.shap_value for c in first.contributions) == pytest.approx(first.margin, abs=1e-3)

    batch = inference.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers[:300]),
                                   metadata=suite.md(agent), timeout=30)
    assert len(batch.predictions) == 300

    def submit(prediction_id):
        return as_json(monitoring.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(rows=[
            monitoring_pb2.FeedbackRow(prediction_id=prediction_id, churned=True)]), metadata=suite.md(agent),
            timeout=10))
    assert wait_feedback_matched(submit, prediction.prediction_id)["matched"] == 1
    # the batch's last row logged too: the log holds at least this test's 301 rows, so a window of 300 is full
    assert wait_feedback_matched(submit, batch.predictions[-1].prediction_id)["matched"] == 1

    drift = monitoring.GetDriftReport(monitoring_pb2.GetDriftReportRequest(window=300, format="json"),
                                      metadata=suite.md(admin, key="ops"), timeout=60)
    assert drift.report.content_type.startswith("application/json")
    assert (drift.summary.columns, drift.summary.current_rows) == (FEATURE_COLUMNS, 300)
    assert [c.column for c in drift.summary.by_column] == list(features.FEATURE_COLUMNS)

    before = monitoring.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=suite.md(agent),
                                        timeout=5).percent
    assert before == 0
    changed = monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=35),
                                         metadata=suite.md(admin, key="ops"), timeout=5)
    assert (changed.previous, changed.percent) == (0, 35)
    assert suite.gateway.runtime()["routing.inference.inference_staging"] == "35"


def test_rest_journey_matches_grpc(suite, customers, canary_restored):
    username, password = f"rest-{uuid.uuid4().hex[:8]}", "pw-" + secrets.token_urlsafe(12)
    registered = suite.rest("POST", "/v1/auth/register", {"username": username, "password": password})
    assert registered.status == 200, registered.body
    assert registered.json()["user"]["approved"] is False
    admin = suite.admin_token()
    approve = suite.rest("POST", f"/v1/users/{username}:approve", {"approve": True}, token=admin, key="ops")
    assert approve.status == 200 and approve.json()["user"]["approved"] is True, approve.body

    login = suite.rest("POST", "/v1/auth/token", {"username": username, "password": password})
    assert login.status == 200, login.body
    token = login.json()["access_token"]
    cookie = login.headers["set-cookie"]
    assert cookie.startswith("access_token=") and "HttpOnly" in cookie
    cookie_value = cookie.split(";", 1)[0]

    customer = as_json(customers[1])
    body = {"customer": customer, "explain_top_k": 2}
    by_bearer = suite.rest("POST", "/v1/predict", body, token=token)
    by_cookie = suite.rest("POST", "/v1/predict", body, headers={"cookie": cookie_value})
    assert by_bearer.status == by_cookie.status == 200, (by_bearer.body, by_cookie.body)
    assert by_bearer.headers["x-churn-served-by"] == "production"
    rest_prediction = by_bearer.json()["prediction"]

    _, inference, monitoring = suite.stubs()
    grpc_prediction = as_json(inference.Predict(inference_pb2.PredictRequest(customer=customers[1], explain_top_k=2),
                                                metadata=suite.md(token), timeout=10).prediction)
    for field in ("prediction_id",):  # derived from each request's id
        rest_prediction.pop(field), grpc_prediction.pop(field)
    assert rest_prediction == grpc_prediction
    assert by_cookie.json()["prediction"]["probability"] == grpc_prediction["probability"]

    explain = suite.rest("POST", "/v1/explain", {"customers": [as_json(c) for c in customers[:2]]}, token=admin)
    assert explain.status == 200, explain.body
    grpc_explain = as_json(inference.Explain(inference_pb2.ExplainRequest(customers=customers[:2]),
                                             metadata=suite.md(admin), timeout=20))
    assert explain.json()["model"] == grpc_explain["model"]
    for rest_row, grpc_row in zip(explain.json()["explanations"], grpc_explain["explanations"]):
        assert rest_row["margin"] == pytest.approx(grpc_row["margin"], abs=1e-9)
        assert [c["feature"] for c in rest_row["contributions"]] == [c["feature"] for c in grpc_row["contributions"]]

    prediction_id = by_bearer.json()["prediction"]["prediction_id"]

    def submit(pid):
        reply = suite.rest("POST", "/v1/feedback", {"rows": [{"prediction_id": pid, "churned": False}]}, token=token)
        assert reply.status == 200, reply.body
        return reply.json()
    assert wait_feedback_matched(submit, prediction_id)["matched"] == 1
    listed = suite.rest("GET", "/v1/feedback?limit=500", token=token)
    assert listed.status == 200 and any(r["prediction_id"] == prediction_id for r in listed.json()["records"])

    # 200 rows of this test's own in the log (whatever ran before), the last one confirmed logged: a full window
    batch = inference.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers[:200]),
                                   metadata=suite.md(token), timeout=30)
    assert wait_feedback_matched(submit, batch.predictions[-1].prediction_id)["matched"] == 1
    drift = suite.rest("GET", "/v1/monitoring/drift?window=200&format=json", token=admin, key="ops")
    assert drift.status == 200, drift.body[:500]
    assert drift.headers["content-type"].startswith("application/json")
    rest_drift = json.loads(drift.body)  # the report itself, not wrapped by the transcoder
    grpc_drift = monitoring.GetDriftReport(monitoring_pb2.GetDriftReportRequest(window=200, format="json"),
                                           metadata=suite.md(admin, key="ops"), timeout=60)
    assert json.loads(grpc_drift.report.data) == rest_drift
    summary = as_json(grpc_drift.summary)
    assert (rest_drift["current_rows"], rest_drift["columns"]) == (200, FEATURE_COLUMNS)
    for field in ("model_version", "reference_rows", "current_rows", "columns", "drifted_columns", "dataset_drift",
                  "drift_share"):
        assert rest_drift[field] == summary[field], field
    assert list(rest_drift["by_column"]) == [c["column"] for c in summary["by_column"]]
    html = suite.rest("GET", "/v1/monitoring/drift?window=200", token=admin, key="ops")
    assert html.status == 200 and html.headers["content-type"].startswith("text/html")

    weight = suite.rest("GET", "/v1/canary", token=token)
    assert (weight.status, weight.json()) == (200, {"percent": 0})
    changed = suite.rest("POST", "/v1/canary", {"percent": 25}, token=admin, key="ops")
    assert changed.status == 200 and changed.json() == {"percent": 25, "previous": 0}, changed.body
    grpc_weight = monitoring.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=suite.md(token),
                                             timeout=5)
    assert suite.rest("GET", "/v1/canary", token=token).json() == as_json(grpc_weight) == {"percent": 25}


def test_rest_errors_map_to_http_statuses(suite, customers):
    _, _, token = suite.approved_agent()
    bad = as_json(customers[0])
    bad["tenure"] = -5
    reply = suite.rest("POST", "/v1/predict", {"customer": bad}, token=token)
    assert reply.status == 400, reply.body
    assert "tenure" in reply.body.decode()
    assert suite.rest("GET", "/v1/no-such-route", token=token).status == 404
    assert suite.rest("GET", "/healthz", key=None).status == 200
    jwks = suite.rest("GET", "/.well-known/jwks.json")
    assert jwks.status == 200 and jwks.json()["keys"]
