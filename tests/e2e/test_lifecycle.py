"""The model lifecycle through Envoy, REST and gRPC: upload a shifted training CSV → Retrain (a child process) →
version 3 registered as `staging` with its lineage, the staging instance serving it → 400 predictions at weight 50
with their true labels → AnalyzeCanary shows both versions' figures → shadow 100 % at weight 0 → 500 predictions,
every one answered by production, each mirrored to staging → AnalyzeCanary judges staging on its 500 shadow rows
against production's answers to the same requests, labels included → Promote → production answers with version 3
and `previous` is 1 → Rollback → version 1 again; every step (weight and shadow changes too) in ListModelEvents
with the admin's name; the logged predictions with their inputs in ListPredictions; bad input → 400 /
INVALID_ARGUMENT naming the field; an external load generator (h2load with a pre-encoded gRPC frame through Envoy,
driven by bench/load.py) running through Promote and Rollback sees no failed prediction, counted by h2load AND by
the inference instances' own `churn_grpc_requests_total` (an HTTP 200 does not prove a gRPC OK). The registry's
aliases and the shadow percent are put back afterwards, so the other tests see the suite as they expect."""
from __future__ import annotations

import collections
import json
import threading
import time

import grpc
import pytest
from google.api import httpbody_pb2
from google.protobuf import json_format

from bench import load
from churn.v1 import common_pb2, inference_pb2, monitoring_pb2
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.telco_csv import parse_telco_csv
from tests.e2e.conftest import ADMIN, TELCO_CSV

pytestmark = pytest.mark.integration


def shifted_csv() -> bytes:
    """The Telco data with prices 30 % up: the market moved, the labels stay."""
    data = parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6)
    frame = data.frame.assign(MonthlyCharges=data.frame["MonthlyCharges"] * 1.3,
                              TotalCharges=data.frame["TotalCharges"] * 1.3)
    frame.insert(0, "customerID", data.customer_ids)
    frame["Churn"] = data.churn.map({True: "Yes", False: "No"}).to_numpy()
    return frame.to_csv(index=False).encode()


PREDICT_PATH = f"/{inference_pb2.DESCRIPTOR.services_by_name['InferenceService'].full_name}/Predict"
BATCH = 200  # requests per h2load run: a fixed count, so no request is cut off when a run ends


class ExternalLoad(threading.Thread):
    """h2load through Envoy (one customer's Predict, 4 connections) run after run until stopped."""

    def __init__(self, suite, customer, workdir):
        super().__init__(daemon=True)
        self.suite = suite
        self.frame, self.log = workdir / "lifecycle-predict.grpc", workdir / "lifecycle-h2load.log"
        self.frame.write_bytes(load.grpc_frame(inference_pb2.PredictRequest(customer=customer)))
        self.points: list[load.Point] = []
        self.error: Exception | None = None
        self.done = threading.Event()

    def run(self):
        url = f"http://127.0.0.1:{self.suite.gateway.port}{PREDICT_PATH}"
        headers = {"authorization": f"Bearer {self.suite.service_token}", "x-api-key": self.suite.settings.api_key}
        try:
            while not self.done.is_set():
                self.points.append(load.h2load(url, self.frame, headers, 4, 0, [], self.log, requests=BATCH))
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error


def inference_counts(suite, *versions: str) -> dict[str, float]:
    """What the inference instances counted themselves: Predict answers (all, OK) and rows scored per version."""
    ports = [suite.services[alias].http_port for alias in ("production", "staging")]
    counts = {"predict": load.metric_sum(ports, "churn_grpc_requests_total", method="Predict"),
              "predict_ok": load.metric_sum(ports, "churn_grpc_requests_total", method="Predict", code="OK")}
    for version in versions:
        counts[version] = load.metric_sum(ports, "churn_inference_predictions_total", model_version=version)
    return counts


def until_scored(suite, version: str, more_than: float, timeout: float = 60) -> None:
    """Wait until the instances scored more than `more_than` rows with `version` (the load reached it)."""
    deadline = time.monotonic() + timeout
    while inference_counts(suite, version)[version] <= more_than:
        assert time.monotonic() < deadline, f"the load scored no more rows with version {version}"
        time.sleep(0.2)


def serving(suite, admin: str, alias: str) -> str:
    _, inference, _ = suite.stubs()
    info = inference.GetModelInfo(inference_pb2.GetModelInfoRequest(), timeout=10,
                                  metadata=suite.md(admin, x_churn_alias=alias))
    return info.model.version


def predict_version(suite, customer) -> str:
    _, inference, _ = suite.stubs()
    reply = inference.Predict(inference_pb2.PredictRequest(customer=customer), metadata=suite.md(suite.service_token),
                              timeout=10)
    assert reply.prediction.model.alias == "production"
    return reply.prediction.model.version


def canary_with_labels(suite, customers, ops) -> monitoring_pb2.AnalyzeCanaryResponse:
    """400 predictions at weight 50, each customer's true label as feedback, then the analysis (once every
    prediction and label has reached monitoring)."""
    _, inference, monitoring = suite.stubs()
    monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=50), metadata=ops, timeout=5)
    for customer in customers[:400]:
        inference.Predict(inference_pb2.PredictRequest(customer=customer), metadata=suite.md(suite.service_token),
                          timeout=10)
    monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=0), metadata=ops, timeout=5)
    csv = label_csv(customers[:400])
    deadline = time.monotonic() + 30
    while True:
        fed = monitoring.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(
            csv=httpbody_pb2.HttpBody(content_type="text/csv", data=csv)), metadata=ops, timeout=30)
        analysis = monitoring.AnalyzeCanary(monitoring_pb2.AnalyzeCanaryRequest(window_minutes=30), metadata=ops,
                                            timeout=30)
        sides = (analysis.production, analysis.staging)
        if fed.matched == 400 and sum(s.labelled for s in sides) >= 400 or time.monotonic() > deadline:
            return analysis
        time.sleep(1)


def label_csv(customers) -> bytes:
    labels = parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6).churn
    return ("customerID,Churn\n" + "".join(f"{c.customer_id},{'Yes' if labels[i] else 'No'}\n"
                                           for i, c in enumerate(customers))).encode()


def shadow_with_labels(suite, customers, admin: str, new: str) -> monitoring_pb2.AnalyzeCanaryResponse:
    """Shadow 100 % at weight 0 (set over REST, read back over gRPC): 500 predictions (400 gRPC, 100 REST), every
    answer production's (the mirror's reply never reaches the caller); at weight 100 staging's own answers are not
    copied; each customer's true label as feedback; the analysis once every shadow row has reached monitoring."""
    _, inference, monitoring = suite.stubs()
    ops = suite.md(admin, key="ops")
    shadow = suite.rest("POST", "/v1/shadow", {"percent": 100}, token=admin, key="ops")
    assert shadow.status == 200 and shadow.json() == {"percent": 100, "previous": 0}, shadow.body
    assert monitoring.GetShadowPercent(monitoring_pb2.GetShadowPercentRequest(), metadata=ops, timeout=5).percent == 100
    assert suite.gateway.runtime()["routing.shadow_percent"] == "100"
    answered = collections.Counter()
    for customer in customers[:400]:
        reply = inference.Predict(inference_pb2.PredictRequest(customer=customer),
                                  metadata=suite.md(suite.service_token), timeout=10)
        answered[(reply.prediction.model.alias, reply.prediction.model.version)] += 1
        assert "-shadow-" not in reply.prediction.prediction_id
    request_ids = {}
    for customer in customers[400:500]:
        reply = suite.rest("POST", "/v1/predict", {"customer": json_format.MessageToDict(
            customer, preserving_proto_field_name=True)}, token=suite.service_token)
        assert reply.status == 200 and reply.headers["x-churn-served-by"] == "production", reply.body
        model = reply.json()["prediction"]["model"]
        answered[(model["alias"], model["version"])] += 1
        request_ids[customer.customer_id] = reply.headers["x-request-id"]
    assert answered == {("production", "1"): 500}, answered

    # the REST caller's request, answered by production, was also answered by staging into the log (marked)
    one = customers[450].customer_id
    deadline = time.monotonic() + 30
    while True:
        copies = suite.rest("GET", f"/v1/predictions?alias=staging&shadow=true&customer_id={one}", token=admin,
                            key="ops").json()["predictions"]
        if copies or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(c["record"]["request_id"], c["record"]["model"]["version"], c["record"]["shadow"]) for c in copies] == \
        [(request_ids[one], new, True)], copies

    # a request the split sends to staging is answered there, and never copied to staging again
    suite.set_canary(100)
    live = [inference.Predict(inference_pb2.PredictRequest(customer=c), metadata=suite.md(suite.service_token),
                              timeout=10).prediction for c in customers[500:520]]
    suite.set_canary(0)
    assert {(p.model.alias, p.model.version) for p in live} == {("staging", new)}
    while True:
        staged = suite.rest("GET", f"/v1/predictions?alias=staging&customer_id={customers[519].customer_id}",
                            token=admin, key="ops").json()["predictions"]
        if staged or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [c["record"]["shadow"] for c in staged] == [False], staged  # its live row only
    copies = suite.rest("GET", "/v1/predictions?alias=staging&shadow=true&page_size=1000", token=admin,
                        key="ops").json()["predictions"]
    assert not {c["record"]["customer"]["customer_id"] for c in copies} & {p.customer_id for p in live}

    fed = monitoring.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(csv=httpbody_pb2.HttpBody(
        content_type="text/csv", data=label_csv(customers[:500]))), metadata=ops, timeout=30)
    assert fed.matched == 500  # labels the answers the customers got, never the shadow copies
    while True:
        analysis = monitoring.AnalyzeCanary(monitoring_pb2.AnalyzeCanaryRequest(window_minutes=30), metadata=ops,
                                            timeout=30)
        if analysis.staging.predictions >= 500 or time.monotonic() > deadline + 30:
            return analysis
        time.sleep(1)


def wait_for_run(suite, admin: str, run_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = suite.rest("GET", f"/v1/models/training-runs/{run_id}", token=admin, key="ops")
        assert reply.status == 200, reply.body
        run = reply.json()["run"]
        if run["state"] != "TRAINING_STATE_RUNNING":
            return run
        time.sleep(1)
    raise TimeoutError(f"training run {run_id} still running after {timeout}s")


def test_bad_lifecycle_requests_name_the_field(suite):
    admin = suite.admin_token()
    _, _, monitoring = suite.stubs()
    for body, field in (({}, b"include_shipped_data"), ({"dataset_ids": ["nope"]}, b"dataset_ids[0]"),
                        ({"include_shipped_data": True, "flavor": "lightgbm"}, b"flavor")):
        reply = suite.rest("POST", "/v1/models:retrain", body, token=admin, key="ops")
        assert reply.status == 400 and field in reply.body, reply.body
    with pytest.raises(grpc.RpcError) as bad:
        monitoring.Promote(monitoring_pb2.PromoteRequest(version="v3"), metadata=suite.md(admin, key="ops"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "version" in bad.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        monitoring.ListPredictions(monitoring_pb2.ListPredictionsRequest(page_token="junk"),
                                   metadata=suite.md(admin, key="ops"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in bad.value.details()
    too_big = suite.rest("GET", "/v1/models/events?page_size=5000", token=admin, key="ops")
    assert too_big.status == 400 and b"page_size" in too_big.body, too_big.body
    with pytest.raises(grpc.RpcError) as bad:
        monitoring.GetTrainingRun(monitoring_pb2.GetTrainingRunRequest(run_id=" "), metadata=suite.md(admin, key="ops"),
                                  timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "run_id" in bad.value.details()
    assert suite.rest("GET", "/v1/models/training-runs/unknown", token=admin, key="ops").status == 404
    bad_window = suite.rest("GET", "/v1/canary/analysis?window_minutes=-1", token=admin, key="ops")
    assert bad_window.status == 400 and b"window_minutes" in bad_window.body, bad_window.body
    # admin only, ops key only
    _, _, agent = suite.approved_agent("lifecycle")
    assert suite.rest("POST", "/v1/models:promote", {}, token=agent, key="ops").status == 403
    assert suite.rest("POST", "/v1/models:rollback", {}, token=admin, key="client").status == 403


def test_retrain_promote_rollback(suite, customers, record_property):
    admin = suite.admin_token()
    _, _, monitoring = suite.stubs()
    ops = suite.md(admin, key="ops")
    registry = R.ModelRegistry(mlflow_config.tracking_uri(suite.settings), suite.settings.model_name)
    before = {alias: registry.version_for(alias) for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING)}
    assert before == {"production": "1", "staging": "2"}
    new = str(max(int(v.version) for v in registry.versions()) + 1)  # the version Retrain will register
    first_event = monitoring.ListModelEvents(monitoring_pb2.ListModelEventsRequest(page_size=1), metadata=ops,
                                             timeout=10).events
    since = first_event[0].event_id if first_event else 0
    generator = None
    shadow_off = False
    try:
        upload = suite.rest("POST", "/v1/data/training?name=prices-up-30", shifted_csv(), token=admin, key="ops",
                            headers={"content-type": "text/csv"})
        assert upload.status == 200, upload.body
        dataset_id = upload.json()["dataset_id"]

        started = suite.rest("POST", "/v1/models:retrain", {"dataset_ids": [dataset_id], "flavor": "xgboost"},
                             token=admin, key="ops")
        assert started.status == 200, started.body
        run = started.json()["run"]
        assert run["state"] == "TRAINING_STATE_RUNNING" and run["started_by"] == ADMIN
        with pytest.raises(grpc.RpcError) as busy:
            monitoring.Retrain(monitoring_pb2.RetrainRequest(include_shipped_data=True), metadata=ops, timeout=10)
        assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and run["run_id"] in busy.value.details()

        done = wait_for_run(suite, admin, run["run_id"])
        assert done["state"] == "TRAINING_STATE_SUCCEEDED", done
        assert done["model_version"] == new and done["parent_version"] == "1" and done["error"] == ""
        assert done["progress"] == 1 and any("[ 20%]" in line for line in done["log_tail"])
        assert done["datasets"] == [{"source": "upload", "dataset_id": dataset_id, "name": "prices-up-30",
                                     "rows": 7043}]
        assert done["metrics"]["roc_auc"] > 0.8
        assert registry.version_for(R.ALIAS_STAGING) == new
        tags = registry.get(new).tags
        assert json.loads(tags["lineage.datasets"])[0]["dataset_id"] == dataset_id
        assert tags["lineage.parent_version"] == "1" and tags["lineage.rows"] == "7043"
        assert tags["lineage.code_version"] and tags["flavor"] == "xgboost"
        assert serving(suite, admin, "staging") == new  # the staging instance was told to reload

        analysis = canary_with_labels(suite, customers, ops)
        assert analysis.production.model.version == "1" and analysis.staging.model.version == new
        for side in (analysis.production, analysis.staging):
            assert side.predictions >= 100 and side.labelled >= 100 and side.HasField("roc_auc"), analysis
            assert side.HasField("error_rate") and side.error_rate == 0.0 and side.latency_p99_ms > 0
        assert analysis.verdict != monitoring_pb2.CANARY_VERDICT_UNSPECIFIED and analysis.reasons
        assert analysis.thresholds.min_predictions == suite.settings.canary_min_predictions

        shadowed = shadow_with_labels(suite, customers, admin, new)
        assert shadowed.shadow is True, shadowed
        assert shadowed.production.model.version == "1" and shadowed.staging.model.version == new
        assert shadowed.staging.predictions == shadowed.production.predictions == 500, shadowed
        for side in (shadowed.production, shadowed.staging):
            assert side.labelled == 500 and side.HasField("roc_auc") and side.latency_p99_ms > 0, shadowed
        assert shadowed.staging.roc_auc > 0.7 and shadowed.reasons
        off = monitoring.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=0), metadata=ops, timeout=5)
        assert (off.percent, off.previous) == (0, 100)
        shadow_off = True

        generator = ExternalLoad(suite, customers[2], suite.workdir)  # nothing may fail while production reloads
        counted = inference_counts(suite, "1", new)
        generator.start()
        until_scored(suite, "1", counted["1"] + BATCH)
        promoted = monitoring.Promote(monitoring_pb2.PromoteRequest(version=new), metadata=ops, timeout=120)
        assert (promoted.production_version, promoted.previous_version, promoted.changed,
                promoted.canary_percent) == (new, "1", True, 0)
        assert registry.version_for(R.ALIAS_PREVIOUS) == "1"
        assert predict_version(suite, customers[0]) == new
        until_scored(suite, new, counted[new] + 1 + BATCH)  # the load's own rows, beyond predict_version's one
        again = suite.rest("POST", "/v1/models:promote", {}, token=admin, key="ops")
        assert again.status == 200 and again.json()["changed"] is False, again.body

        rolled = suite.rest("POST", "/v1/models:rollback", {}, token=admin, key="ops")
        assert rolled.status == 200, rolled.body
        assert (rolled.json()["production_version"], rolled.json()["rolled_back_version"]) == ("1", new)
        assert predict_version(suite, customers[1]) == "1"
        assert suite.rest("POST", "/v1/models:rollback", {}, token=admin, key="ops").json()["changed"] is False
        until_scored(suite, "1", inference_counts(suite, "1")["1"] + BATCH)
        generator.done.set()
        generator.join(timeout=120)
        assert generator.error is None and not generator.is_alive(), generator.error
        after = inference_counts(suite, "1", new)
        sent = len(generator.points) * BATCH
        answered = sum(p.requests for p in generator.points)
        failed = sum(p.failed for p in generator.points)
        assert (answered, failed, sum(p.status_2xx for p in generator.points)) == (sent, 0, sent), generator.points
        # each of h2load's calls and the two predict_version calls was answered OK by an instance, and none was not
        assert after["predict_ok"] - counted["predict_ok"] == sent + 2, (counted, after, sent)
        assert after["predict"] - counted["predict"] == sent + 2, (counted, after, sent)
        assert after[new] - counted[new] > BATCH and after["1"] - counted["1"] > 2 * BATCH, (counted, after)
        record_property("h2load_through_promote_and_rollback", {"sent": sent, "failed": failed, **{
            f"scored_by_version_{v}": after[v] - counted[v] for v in ("1", new)}})

        events = suite.rest("GET", "/v1/models/events?page_size=50", token=admin, key="ops").json()["events"]
        trail = [(e["kind"].removeprefix("MODEL_EVENT_KIND_"), e["model_version"], e["actor"])
                 for e in reversed(events) if int(e["event_id"]) > since]
        assert trail == [("RETRAIN_STARTED", "", ADMIN), ("RETRAIN_FINISHED", new, ADMIN), ("CANARY_WEIGHT", "", ADMIN),
                         ("CANARY_WEIGHT", "", ADMIN), ("SHADOW_PERCENT", "", ADMIN), ("CANARY_WEIGHT", "", ADMIN),
                         ("CANARY_WEIGHT", "", ADMIN), ("SHADOW_PERCENT", "", ADMIN), ("PROMOTE", new, ADMIN),
                         ("ROLLBACK", "1", ADMIN)], trail
        assert [int(e["shadow_percent"]) for e in reversed(events) if int(e["event_id"]) > since
                and e["kind"] == "MODEL_EVENT_KIND_SHADOW_PERCENT"] == [100, 0]

        # the prediction production made with the new version, with its inputs, once the outbox has shipped it
        deadline = time.monotonic() + 30
        while True:
            logged = suite.rest("GET", f"/v1/predictions?model_version={new}&alias=production&customer_id="
                                f"{customers[0].customer_id}&shadow=false&page_size=5", token=admin, key="ops")
            assert logged.status == 200, logged.body
            if logged.json()["predictions"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        record = logged.json()["predictions"][0]["record"]
        assert record["customer"]["customer_id"] == customers[0].customer_id
        assert record["customer"]["contract"] == common_pb2.Contract.Name(customers[0].contract)
        assert record["customer"]["tenure"] == customers[0].tenure and record["shadow"] is False
    finally:
        if generator is not None:
            generator.done.set()
        if not shadow_off:
            monitoring.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=0), metadata=ops, timeout=5)
        for alias, version in before.items():
            registry.set_alias(alias, version)
        if R.ALIAS_PREVIOUS in (registry.client.get_registered_model(registry.name).aliases or {}):
            registry.client.delete_registered_model_alias(registry.name, R.ALIAS_PREVIOUS)  # the suite had none
        for alias in before:
            reloaded = suite.rest("POST", "/v1/model:reload", {"alias": alias}, token=admin, key="ops",
                                  headers={"x-churn-alias": alias})
            assert reloaded.status == 200, reloaded.body


def test_shadow_copies_of_a_stream_and_an_explain_leave_the_callers_answers_alone(suite, customers):
    """Every canary route is mirrored while the shadow percent is on: a bidirectional stream still gets all its
    answers from production, in order (the copy streams beside it), and staging logs a shadow row per message."""
    admin = suite.admin_token()
    _, inference, monitoring = suite.stubs()
    ops = suite.md(admin, key="ops")
    monitoring.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=100), metadata=ops, timeout=5)
    try:
        batch = customers[2000:2005]
        replies = list(inference.StreamPredict(iter(inference_pb2.StreamPredictRequest(message_id=str(i), customer=c)
                                                    for i, c in enumerate(batch)),
                                               metadata=suite.md(suite.service_token), timeout=30))
        assert [(r.message_id, r.prediction.model.alias) for r in replies] == [(str(i), "production")
                                                                              for i in range(5)]
        explained = inference.Explain(inference_pb2.ExplainRequest(customers=batch[:1]), metadata=suite.md(admin),
                                      timeout=30)
        assert explained.model.alias == "production"
        deadline = time.monotonic() + 30
        while True:
            copies = suite.rest("GET", f"/v1/predictions?alias=staging&shadow=true&customer_id="
                                f"{batch[4].customer_id}", token=admin, key="ops").json()["predictions"]
            if copies or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [c["record"]["prediction_id"] for c in copies] == [f"{copies[0]['record']['request_id']}-shadow-4"]
    finally:
        monitoring.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=0), metadata=ops, timeout=5)
