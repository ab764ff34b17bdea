"""Every REST binding of the contract (additional bindings included), called through the real Envoy with the body
type the README shows — JSON, raw `text/csv`, query parameters or nothing — and exact expectations about the answer.

Retrain, Promote and Rollback would move the shared suite's aliases for every other test: here they get a body
whose values the service must have read to answer as it does (their successful REST path is walked in
tests/e2e/test_lifecycle.py). Caller mistakes per RPC are tests/e2e/test_caller_mistakes.py."""
from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from typing import Callable

import pytest
from google.protobuf import json_format

from churn.v1 import common_pb2
from gateway.routes import http_bindings
from tests.e2e.conftest import TELCO_CSV

pytestmark = pytest.mark.integration
CSV_TYPES = ("text/csv", "text/csv; charset=utf-8")


@dataclasses.dataclass
class Context:
    suite: object
    customers: list
    admin: str
    agent: str
    user: str = ""
    dataset_id: str = ""

    def rest(self, method, path, body=None, *, token="admin", key="client", **kw):
        token = {"admin": self.admin, "agent": self.agent, "service": self.suite.service_token, None: None}[token]
        return self.suite.rest(method, path, body, token=token, key=key, **kw)


CASES: dict[tuple[str, str], Callable[[Context], None]] = {}


def binding(verb: str, template: str):
    def register(case):
        CASES[(verb, template)] = case
        return case
    return register


def customer_json(customer) -> dict:
    return json_format.MessageToDict(customer, preserving_proto_field_name=True)


def ok(reply) -> dict:
    assert reply.status == 200, reply.body[:500]
    return reply.json()


def telco_csv(rows: int) -> bytes:
    return b"\n".join(TELCO_CSV.read_bytes().splitlines()[:rows + 1]) + b"\n"


# ---------------------------------------------------------------- auth

@binding("POST", "/v1/auth/register")
def register(ctx: Context):
    ctx.user = f"rest-{uuid.uuid4().hex[:8]}"
    reply = ok(ctx.rest("POST", "/v1/auth/register", {"username": ctx.user, "password": "Str0ng-passw0rd"},
                        token=None))
    assert {k: reply["user"][k] for k in ("username", "role", "approved")} == {
        "username": ctx.user, "role": "ROLE_AGENT", "approved": False}


@binding("POST", "/v1/auth/token")
def login(ctx: Context):
    reply = ctx.rest("POST", "/v1/auth/token", {"username": "admin", "password": ctx.suite.admin_password}, token=None)
    body = ok(reply)
    assert body["token_type"] == "Bearer" and body["role"] == "ROLE_ADMIN" and int(body["expires_in"]) > 0
    assert "access_token=" + body["access_token"] in reply.headers["set-cookie"]
    assert "HttpOnly" in reply.headers["set-cookie"]


@binding("GET", "/v1/auth/session")
def session(ctx: Context):
    reply = ok(ctx.rest("GET", "/v1/auth/session"))
    assert (reply["username"], reply["role"], reply["approved"]) == ("admin", "ROLE_ADMIN", True)


@binding("GET", "/v1/users")
def list_users(ctx: Context):
    register(ctx)
    pending = ok(ctx.rest("GET", "/v1/users?pending_only=true", key="ops"))["users"]
    assert ctx.user in {u["username"] for u in pending} and all(u["approved"] is False for u in pending)


@binding("POST", "/v1/users/{username}:approve")
def approve(ctx: Context):
    register(ctx)
    reply = ok(ctx.rest("POST", f"/v1/users/{ctx.user}:approve", {"approve": True}, key="ops"))
    assert (reply["user"]["username"], reply["user"]["approved"]) == (ctx.user, True)


@binding("GET", "/.well-known/jwks.json")
def jwks(ctx: Context):
    reply = ctx.rest("GET", "/.well-known/jwks.json", token=None)
    keys = ok(reply)["keys"]
    assert reply.headers["content-type"] == "application/json"
    assert keys and all(k["kty"] == "EC" and k["crv"] == "P-256" and k["kid"] for k in keys)


@binding("POST", "/v1/auth/keys:rotate")
def rotate(ctx: Context):
    reply = ok(ctx.rest("POST", "/v1/auth/keys:rotate", {}, key="ops"))
    assert reply["next_kid"] in reply["published_kids"] and reply["signing_kid"] in reply["published_kids"]
    published = {k["kid"] for k in ok(ctx.rest("GET", "/.well-known/jwks.json", token=None))["keys"]}
    assert set(reply["published_kids"]) <= published


# ---------------------------------------------------------------- inference

@binding("POST", "/v1/predict")
def predict(ctx: Context):
    customer = ctx.customers[0]
    reply = ok(ctx.rest("POST", "/v1/predict", {"customer": customer_json(customer), "explain_top_k": 2},
                        token="agent"))["prediction"]
    assert reply["customer_id"] == customer.customer_id and reply["model"]["alias"] == "production"
    assert len(reply["reasons"]) == 2 and 0 <= reply["probability"] <= 1


@binding("POST", "/v1/predict:batch")
def predict_batch(ctx: Context):
    body = {"customers": [customer_json(c) for c in ctx.customers[:3]]}
    reply = ok(ctx.rest("POST", "/v1/predict:batch", body, token="agent"))
    assert [p["customer_id"] for p in reply["predictions"]] == [c.customer_id for c in ctx.customers[:3]]


@binding("POST", "/v1/predict:csv")
def predict_csv(ctx: Context):
    for content_type in CSV_TYPES:
        reply = ok(ctx.rest("POST", "/v1/predict:csv", telco_csv(4), token="agent",
                            headers={"content-type": content_type}))
        assert [p["customer_id"] for p in reply["predictions"]] == [c.customer_id for c in ctx.customers[:4]]


@binding("POST", "/v1/explain")
def explain(ctx: Context):
    reply = ok(ctx.rest("POST", "/v1/explain", {"customers": [customer_json(ctx.customers[1])]}))
    (explanation,) = reply["explanations"]
    total = explanation["base_value"] + sum(c["shap_value"] for c in explanation["contributions"])
    assert explanation["customer_id"] == ctx.customers[1].customer_id
    assert total == pytest.approx(explanation["margin"], abs=1e-4)


@binding("POST", "/v1/retention:suggest")
def retention(ctx: Context):
    reply = ok(ctx.rest("POST", "/v1/retention:suggest", {"customers": [customer_json(ctx.customers[2])],
                                                           "top_k": 1}, token="agent"))
    (levers,) = reply["levers"]
    assert levers["customer_id"] == ctx.customers[2].customer_id and len(levers["single_changes"]) <= 1
    assert all(change["delta"] < 0 for change in levers["single_changes"])


@binding("GET", "/v1/model")
def model_info(ctx: Context):
    for query, alias in (("", "production"), ("?alias=staging", "staging")):
        reply = ok(ctx.rest("GET", "/v1/model" + query, token="agent"))
        assert reply["model"]["alias"] == alias and reply["features"]


@binding("POST", "/v1/model:reload")
def reload_model(ctx: Context):
    reply = ok(ctx.rest("POST", "/v1/model:reload", {"alias": "production"}, key="ops"))
    assert reply["changed"] is False and reply["current"] == reply["previous"]
    assert reply["current"]["alias"] == "production"


# ---------------------------------------------------------------- monitoring

def logged_customers(ctx: Context, count: int) -> list[common_pb2.Customer]:
    """`count` fresh customers (unique ids) predicted through REST, each waited for in the prediction log."""
    fresh = []
    for customer in ctx.customers[10:10 + count]:
        copy = common_pb2.Customer()
        copy.CopyFrom(customer)
        copy.customer_id = f"rest-{secrets.token_hex(4)}"
        fresh.append(copy)
    ok(ctx.rest("POST", "/v1/predict:batch", {"customers": [customer_json(c) for c in fresh]}, token="agent"))
    deadline = time.monotonic() + 30
    for customer in fresh:
        while not ok(ctx.rest("GET", f"/v1/predictions?customer_id={customer.customer_id}", key="ops"))[
                "predictions"]:
            assert time.monotonic() < deadline, f"{customer.customer_id} never reached the prediction log"
            time.sleep(0.3)
    return fresh


@binding("POST", "/v1/feedback")
def feedback_json(ctx: Context):
    first, second = logged_customers(ctx, 2)
    reply = ok(ctx.rest("POST", "/v1/feedback", {"rows": [
        {"customer_id": first.customer_id, "churned": True}, {"customer_id": second.customer_id, "churned": False},
        {"customer_id": "never-predicted", "churned": True}, {"customer_id": first.customer_id}]}, token="agent"))
    assert reply == {"matched": 2, "unmatched": 1, "rejected": 1, "unmatched_ids": ["never-predicted"],
                     "errors": [{"row": 4, "field": "churned", "reason": "is required"}]}


@binding("POST", "/v1/feedback:csv")
def feedback_csv(ctx: Context):
    for content_type in CSV_TYPES:
        first, second, third = logged_customers(ctx, 3)
        by_customer = (f"customerID,Churn\n{first.customer_id},Yes\n{second.customer_id},no\nnever-predicted,Yes\n"
                       f"{third.customer_id},maybe\n,Yes\n").encode()
        reply = ok(ctx.rest("POST", "/v1/feedback:csv", by_customer, token="agent",
                            headers={"content-type": content_type}))
        assert reply == {"matched": 2, "unmatched": 1, "rejected": 2, "unmatched_ids": ["never-predicted"],
                         "errors": [{"row": 5, "field": "Churn", "reason": "must be Yes or No, got 'maybe'"},
                                    {"row": 6, "field": "customerID", "reason": "is empty"}]}
        prediction_id = ok(ctx.rest("GET", f"/v1/predictions?customer_id={third.customer_id}", key="ops"))[
            "predictions"][0]["record"]["prediction_id"]
        by_prediction = f"prediction_id,Churn\n{prediction_id},No\nno-such-prediction,Yes\n".encode()
        reply = ok(ctx.rest("POST", "/v1/feedback:csv", by_prediction, token="agent",
                            headers={"content-type": content_type}))
        assert reply == {"matched": 1, "unmatched": 1, "rejected": 0, "unmatched_ids": ["no-such-prediction"],
                         "errors": []}
        labelled = ok(ctx.rest("GET", f"/v1/predictions?customer_id={third.customer_id}", key="ops"))["predictions"]
        assert labelled[0]["actual_churn"] is False


@binding("GET", "/v1/feedback")
def feedback_data(ctx: Context):
    (customer,) = logged_customers(ctx, 1)
    ok(ctx.rest("POST", "/v1/feedback", {"rows": [{"customer_id": customer.customer_id, "churned": True}]},
                token="agent"))
    records = ok(ctx.rest("GET", "/v1/feedback?limit=10000", token="agent"))["records"]
    mine = [r for r in records if r["customer_id"] == customer.customer_id]
    assert len(mine) == 1 and mine[0]["actual_churn"] is True


@binding("GET", "/v1/monitoring/drift")
def drift(ctx: Context):
    ok(ctx.rest("POST", "/v1/predict:csv", telco_csv(60), token="service", headers={"content-type": "text/csv"}))
    deadline = time.monotonic() + 30
    while (reply := ctx.rest("GET", "/v1/monitoring/drift?window=50&format=json", key="ops")).status != 200:
        assert time.monotonic() < deadline and reply.status == 400, reply.body[:300]  # < 50 rows shipped yet
        time.sleep(0.5)
    assert reply.headers["content-type"] == "application/json"
    assert (reply.json()["current_rows"], len(reply.json()["by_column"])) == (50, reply.json()["columns"])
    html = ctx.rest("GET", "/v1/monitoring/drift?window=50&format=html", key="ops")
    assert html.status == 200 and html.headers["content-type"].startswith("text/html")


@binding("POST", "/v1/monitoring/metrics:update")
def update_metrics(ctx: Context):
    reply = ok(ctx.rest("POST", "/v1/monitoring/metrics:update", {}, key="ops"))
    assert all(model["model_version"] for model in reply["models"])


@binding("GET", "/v1/models/versions")
def versions(ctx: Context):
    reply = ok(ctx.rest("GET", "/v1/models/versions", token="agent"))
    aliases = {alias for version in reply["versions"] for alias in version["aliases"]}
    assert {"production", "staging"} <= aliases


@binding("GET", "/v1/canary")
def canary_get(ctx: Context):
    assert ok(ctx.rest("GET", "/v1/canary", token="agent")) == {"percent": 0}


@binding("POST", "/v1/canary")
def canary_set(ctx: Context):
    try:
        assert ok(ctx.rest("POST", "/v1/canary", {"percent": 15}, key="ops")) == {"percent": 15, "previous": 0}
        assert ctx.suite.gateway.runtime()["routing.inference.inference_staging"] == "15"
    finally:
        ctx.suite.set_canary(0)


@binding("GET", "/v1/shadow")
def shadow_get(ctx: Context):
    assert ok(ctx.rest("GET", "/v1/shadow", token="agent")) == {"percent": 0}


@binding("POST", "/v1/shadow")
def shadow_set(ctx: Context):
    try:
        assert ok(ctx.rest("POST", "/v1/shadow", {"percent": 15}, key="ops")) == {"percent": 15, "previous": 0}
        assert ctx.suite.gateway.runtime()["routing.shadow_percent"] == "15"
    finally:
        assert ok(ctx.rest("POST", "/v1/shadow", {"percent": 0}, key="ops")) == {"percent": 0, "previous": 15}


@binding("POST", "/v1/data/training")
def upload(ctx: Context):
    for content_type in CSV_TYPES:
        reply = ok(ctx.rest("POST", "/v1/data/training?name=rest-bindings", telco_csv(120), key="ops",
                            headers={"content-type": content_type}))
        assert reply["rows"] == 120 and len(reply["dataset_id"]) == 32
        ctx.dataset_id = reply["dataset_id"]


@binding("POST", "/v1/models:retrain")
def retrain(ctx: Context):
    upload(ctx)
    reply = ctx.rest("POST", "/v1/models:retrain", {"dataset_ids": [ctx.dataset_id, ctx.dataset_id]}, key="ops")
    assert reply.status == 400 and b"dataset_ids[1]" in reply.body and b"twice" in reply.body, reply.body


@binding("GET", "/v1/models/training-runs/{run_id}")
def training_run(ctx: Context):
    reply = ctx.rest("GET", "/v1/models/training-runs/0123456789abcdef0123456789abcdef", key="ops")
    assert reply.status == 404 and reply.json() == {"code": 5, "message": "no training run has this run_id",
                                                    "details": []}


@binding("POST", "/v1/models:promote")
def promote(ctx: Context):
    reply = ctx.rest("POST", "/v1/models:promote", {"version": "999999"}, key="ops")
    assert reply.status == 400 and b"not 999999: nothing was promoted" in reply.body, reply.body


@binding("POST", "/v1/models:rollback")
def rollback(ctx: Context):
    versions = ok(ctx.rest("GET", "/v1/models/versions", token="agent"))["versions"]
    alias = {a: v["version"] for v in versions for a in v["aliases"]}
    if "previous" not in alias:
        reply = ctx.rest("POST", "/v1/models:rollback", {}, key="ops")
        assert reply.status == 400 and b"nothing to roll back to" in reply.body, reply.body
    else:  # after the lifecycle test: production is back on previous, so a rollback moves nothing
        assert alias["previous"] == alias["production"], "a rollback here would move the shared suite's production"
        reply = ok(ctx.rest("POST", "/v1/models:rollback", {}, key="ops"))
        assert (reply["production_version"], reply["changed"]) == (alias["production"], False)


@binding("GET", "/v1/models/events")
def events(ctx: Context):
    canary_set(ctx)  # two weight changes, the newest first
    first = ok(ctx.rest("GET", "/v1/models/events?page_size=1", key="ops"))
    second = ok(ctx.rest("GET", f"/v1/models/events?page_size=1&page_token={first['next_page_token']}", key="ops"))
    (newest,), (before,) = first["events"], second["events"]
    assert [(e["kind"], e["canary_percent"]) for e in (newest, before)] == [
        ("MODEL_EVENT_KIND_CANARY_WEIGHT", 0), ("MODEL_EVENT_KIND_CANARY_WEIGHT", 15)]
    assert int(newest["event_id"]) > int(before["event_id"])


@binding("GET", "/v1/predictions")
def predictions(ctx: Context):
    (customer,) = logged_customers(ctx, 1)
    reply = ok(ctx.rest("GET", f"/v1/predictions?customer_id={customer.customer_id}&alias=production&shadow=false"
                               "&page_size=5", key="ops"))
    (logged,) = reply["predictions"]
    assert logged["record"]["customer"]["customer_id"] == customer.customer_id
    assert logged["record"]["model"]["alias"] == "production"


@binding("GET", "/v1/canary/analysis")
def analysis(ctx: Context):
    reply = ok(ctx.rest("GET", "/v1/canary/analysis?window_minutes=30", key="ops"))
    assert reply["thresholds"] and reply["verdict"].startswith("CANARY_VERDICT_")


@binding("POST", "/v1/internal/predictions:record")
def internal(ctx: Context):
    reply = ctx.rest("POST", "/v1/internal/predictions:record", {"records": []}, token="service")
    assert reply.status == 404  # internal: Envoy never routes it


# ---------------------------------------------------------------- the table

BINDINGS = sorted((b.verb, b.template) for items in http_bindings().values() for b in items)


def test_every_binding_has_a_case():
    assert sorted(CASES) == BINDINGS


@pytest.fixture(scope="module")
def ctx(suite, customers) -> Context:
    return Context(suite, customers, suite.admin_token(), suite.approved_agent("bindings")[2])


@pytest.mark.parametrize("verb, template", BINDINGS, ids=[f"{v} {t}" for v, t in BINDINGS])
def test_binding_works_as_documented(ctx, verb, template):
    ctx.admin = ctx.suite.admin_token()  # fresh: a rotation may have retired the key an older one was signed with
    CASES[(verb, template)](ctx)
