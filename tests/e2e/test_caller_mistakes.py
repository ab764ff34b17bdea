"""One table of caller mistakes through the real Envoy, covering every RPC of the contract: each is a 4xx whose body
names the field at fault (never a 5xx), and where the gateway itself must refuse (the transcoder cannot parse the
request, the route is internal) the service never sees the call (its own request counter stays put)."""
from __future__ import annotations

import dataclasses
import functools

import grpc
import pytest
from google.protobuf import json_format

from churn.v1 import common_pb2, inference_pb2
from services.common.access import access_table
from services.common.telco_csv import parse_telco_csv
from tests.e2e.conftest import TELCO_CSV

pytestmark = pytest.mark.integration

SERVICE_PROCESS = {"churn.v1.AuthService": "auth", "churn.v1.MonitoringService": "monitoring",
                   "churn.v1.InferenceService": "production"}  # weight 0: unpinned inference calls reach production


@dataclasses.dataclass(frozen=True)
class Mistake:
    rpc: str  # Service/Method, without the churn.v1 package
    what: str
    method: str
    path: str
    body: object = None
    names: str = ""  # text the reply must contain: the field (or column) at fault
    envoy_refuses: bool = False  # refused at the gateway: the service's counter for the RPC must not move
    status: int = 400
    content_type: str | None = None
    key: str | None = None  # the API key class sent instead of the one the access table asks for


@functools.cache
def _first_customer() -> common_pb2.Customer:
    data = b"\n".join(TELCO_CSV.read_bytes().splitlines()[:2]) + b"\n"
    return parse_telco_csv(data, len(data) + 1, 10).customers()[0]


def _customer(**changes) -> dict:
    """The first Telco customer as REST JSON, with fields changed (None removes one)."""
    customer = json_format.MessageToDict(_first_customer(), preserving_proto_field_name=True)
    customer.update(changes)
    return {k: v for k, v in customer.items() if v is not None}


def _csv(drop_column: str | None = None, rows: int = 5) -> bytes:
    lines = TELCO_CSV.read_bytes().decode().splitlines()[: rows + 1]
    if drop_column is None:
        return ("\n".join(lines) + "\n").encode()
    index = lines[0].split(",").index(drop_column)
    return ("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != index) for line in lines)
            + "\n").encode()


MISTAKES = [
    Mistake("AuthService/Register", "empty username", "POST", "/v1/auth/register",
            {"username": "", "password": "Str0ng-passw0rd"}, "username"),
    Mistake("AuthService/Register", "a role that does not exist", "POST", "/v1/auth/register",
            {"username": "nobody", "password": "Str0ng-passw0rd", "role": "ROLE_OWNER"}, "role", envoy_refuses=True),
    Mistake("AuthService/Login", "empty password", "POST", "/v1/auth/token", {"username": "admin", "password": ""},
            "password"),
    Mistake("AuthService/VerifySession", "a query parameter the request has no field for", "GET",
            "/v1/auth/session?username=admin", names="username", envoy_refuses=True),
    Mistake("AuthService/ListUsers", "pending_only is not a boolean", "GET", "/v1/users?pending_only=maybe",
            names="pending_only", envoy_refuses=True),
    Mistake("AuthService/ApproveUser", "a username that cannot exist", "POST", "/v1/users/Bad%20Name:approve",
            {"approve": True}, "username"),
    Mistake("AuthService/GetJwks", "a query parameter the request has no field for", "GET",
            "/.well-known/jwks.json?kid=1", names="kid", envoy_refuses=True),
    # RotateKeys and UpdateMetrics take no fields (the transcoder even ignores a body that is not JSON for them):
    # the caller's mistake left is the client key on an ops route
    Mistake("AuthService/RotateKeys", "the client key on an ops route", "POST", "/v1/auth/keys:rotate", {},
            "forbidden", envoy_refuses=True, status=403, key="client"),
    Mistake("InferenceService/Predict", "negative tenure", "POST", "/v1/predict",
            {"customer": _customer(tenure=-5)}, "customer.tenure"),
    Mistake("InferenceService/Predict", "a contract that is not an enum value", "POST", "/v1/predict",
            {"customer": _customer(contract="Month-to-month")}, "contract", envoy_refuses=True),
    Mistake("InferenceService/PredictBatch", "second row without a contract", "POST", "/v1/predict:batch",
            {"customers": [_customer(), _customer(contract=None)]}, "customers[1].contract"),
    Mistake("InferenceService/PredictCsv", "a CSV without the MonthlyCharges column", "POST", "/v1/predict:csv",
            _csv("MonthlyCharges"), "MonthlyCharges", content_type="text/csv"),
    Mistake("InferenceService/Explain", "no customers", "POST", "/v1/explain", {"customers": []}, "customers"),
    Mistake("InferenceService/GetModelInfo", "an alias that does not exist", "GET", "/v1/model?alias=canary",
            names="alias"),
    Mistake("InferenceService/ReloadModel", "an alias that does not exist", "POST", "/v1/model:reload",
            {"alias": "canary"}, "alias"),
    Mistake("MonitoringService/RecordPredictions", "the internal route from outside", "POST",
            "/v1/internal/predictions:record", {"records": []}, envoy_refuses=True, status=404),
    Mistake("MonitoringService/SubmitFeedback", "no rows", "POST", "/v1/feedback", {"rows": []}, "rows"),
    Mistake("MonitoringService/SubmitFeedbackCsv", "a CSV without the Churn column", "POST", "/v1/feedback:csv",
            b"customerID,label\n7590-VHVEG,Yes\n", "Churn", content_type="text/csv; charset=utf-8"),
    Mistake("MonitoringService/GetFeedbackData", "a negative limit", "GET", "/v1/feedback?limit=-1", names="limit"),
    Mistake("MonitoringService/GetDriftReport", "window 0", "GET", "/v1/monitoring/drift?window=0", names="window"),
    Mistake("MonitoringService/GetDriftReport", "a format it does not produce", "GET",
            "/v1/monitoring/drift?format=pdf", names="format"),
    Mistake("MonitoringService/UpdateMetrics", "the client key on an ops route", "POST",
            "/v1/monitoring/metrics:update", {}, "forbidden", envoy_refuses=True, status=403, key="client"),
    Mistake("MonitoringService/ListModelVersions", "a query parameter the request has no field for", "GET",
            "/v1/models/versions?alias=production", names="alias", envoy_refuses=True),
    Mistake("MonitoringService/GetCanaryWeight", "a query parameter the request has no field for", "GET",
            "/v1/canary?percent=10", names="percent", envoy_refuses=True),
    Mistake("MonitoringService/SetCanaryWeight", "a percent over 100", "POST", "/v1/canary", {"percent": 101},
            "percent"),
    Mistake("MonitoringService/UploadTrainingData", "a CSV without the Churn column", "POST", "/v1/data/training",
            _csv("Churn"), "Churn", content_type="text/csv"),
    Mistake("InferenceService/SuggestRetention", "top_k over 10", "POST", "/v1/retention:suggest",
            {"customers": [_customer()], "top_k": 11}, "top_k"),
    Mistake("MonitoringService/Retrain", "a dataset id that was never uploaded", "POST", "/v1/models:retrain",
            {"dataset_ids": ["nope"]}, "dataset_ids[0]"),
    Mistake("MonitoringService/GetTrainingRun", "a query parameter the request has no field for", "GET",
            "/v1/models/training-runs/r1?verbose=1", names="verbose", envoy_refuses=True),
    Mistake("MonitoringService/Promote", "a version that is not a number", "POST", "/v1/models:promote",
            {"version": "v3"}, "version"),
    # RollbackRequest has no fields: the caller's mistake left is the client key on an ops route
    Mistake("MonitoringService/Rollback", "the client key on an ops route", "POST", "/v1/models:rollback", {},
            "forbidden", envoy_refuses=True, status=403, key="client"),
    Mistake("MonitoringService/ListModelEvents", "a page over the largest page size", "GET",
            "/v1/models/events?page_size=5000", names="page_size"),
    Mistake("MonitoringService/ListPredictions", "a page token it never gave", "GET",
            "/v1/predictions?page_token=junk", names="page_token"),
    Mistake("MonitoringService/ListModelEvents", "a page token that is not base64 (bad padding)", "GET",
            "/v1/models/events?page_token=abc", names="page_token"),
    Mistake("MonitoringService/AnalyzeCanary", "a negative window", "GET", "/v1/canary/analysis?window_minutes=-1",
            names="window_minutes"),
    Mistake("MonitoringService/GetShadowPercent", "a query parameter the request has no field for", "GET",
            "/v1/shadow?percent=10", names="percent", envoy_refuses=True),
    Mistake("MonitoringService/SetShadowPercent", "a percent over 100", "POST", "/v1/shadow", {"percent": 101},
            "percent"),
]
# Streaming RPCs have no REST mapping: their mistakes are answered per message over gRPC (test below). The Open
# Inference Protocol is gRPC only: its mistakes are tested in tests/e2e/test_open_inference.py and
# tests/inference/test_open_inference.py.
GRPC_ONLY = {"InferenceService/StreamPredict",
             *(path.removeprefix("/") for path in access_table() if path.startswith("/inference.GRPCInferenceService/"))}


def test_the_table_covers_every_rpc():
    every = {path.removeprefix("/").removeprefix("churn.v1.") for path in access_table()}
    assert {m.rpc for m in MISTAKES} | GRPC_ONLY == every


@pytest.fixture(scope="module")
def tokens(suite) -> dict[str, str]:
    return {"agent": suite.approved_agent("mistakes")[2], "admin": suite.admin_token(),
            "service": suite.service_token}


def _credentials(rpc: str, tokens: dict[str, str]) -> dict:
    """The API key and token the access table asks for, with the least privileged role it allows."""
    entry = access_table()[f"/churn.v1.{rpc}"]
    role = next((r for r in ("agent", "service", "admin") if r in entry.roles), None)
    return {"key": "ops" if entry.ops_key_only else "client",
            "token": None if entry.public or role is None else tokens[role]}


def _sent(mistake: Mistake, tokens: dict[str, str]) -> dict:
    credentials = _credentials(mistake.rpc, tokens)
    return dict(credentials, key=mistake.key) if mistake.key else credentials


@pytest.mark.parametrize("mistake", MISTAKES, ids=lambda m: f"{m.rpc.split('/')[1]}: {m.what}")
def test_a_caller_mistake_is_a_4xx_naming_the_field(suite, tokens, mistake):
    service, method = mistake.rpc.split("/")
    process = SERVICE_PROCESS[f"churn.v1.{service}"]
    before = suite.rpc_count(process, method)
    headers = {"content-type": mistake.content_type} if mistake.content_type else None
    reply = suite.rest(mistake.method, mistake.path, mistake.body, headers=headers, **_sent(mistake, tokens))
    text = reply.body.decode(errors="replace")
    assert reply.status == mistake.status, text[:500]
    assert mistake.names.lower() in text.lower(), text[:500]
    assert suite.rpc_count(process, method) == before + (0 if mistake.envoy_refuses else 1)


def test_stream_predict_answers_a_bad_message_naming_the_field(suite, customers, tokens):
    _, inference, _ = suite.stubs()
    broken = common_pb2.Customer()
    broken.CopyFrom(customers[2])
    broken.ClearField("contract")
    messages = [inference_pb2.StreamPredictRequest(message_id="bad", customer=broken)]
    answers = list(inference.StreamPredict(iter(messages), metadata=suite.md(tokens["service"]), timeout=30))
    assert len(answers) == 1 and answers[0].message_id == "bad"
    assert answers[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers[0].error.message.startswith("customer.contract"), answers[0].error.message
