"""The automatic canary through a real Envoy, with no human action after each Retrain: a suite of its own with
CANARY_AUTO on (steps 10 → 50 → 100, judged every second), over a copy of the session's registry, and an external
load generator that predicts with a service token and sends each prediction's true label as feedback. A candidate
trained on shuffled labels is rolled back to weight 0; a good one reaches 100 % and is promoted by
`monitoring:canary` (production reloads with monitoring's own credential and serves it, weight back to 0). No
prediction fails meanwhile. The suite's own staging version 2 may be rolled out too while the first Retrain runs:
every assertion names the version it is about, so how far version 2 got does not matter."""
from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest

from churn.v1 import inference_pb2, monitoring_pb2
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.telco_csv import parse_telco_csv
from tests.e2e.conftest import TELCO_CSV, start_suite, stop_suite
from tests.harness import base_env

pytestmark = pytest.mark.integration

BATCH = 20
MIN_LABELLED = 200
# A side with fewer labelled rows than CANARY_MIN_LABELLED passes the ROC AUC check unjudged, so a judgement needs
# more rows than that by the rows that may still wait for their label (three calls: see Traffic): no step is taken
# without the shuffled-labels candidate's AUC judged, on at least MIN_LABELLED rows (its AUC on 100 random rows
# clears the floor about once in 100, on 200 about once in 3,000).
AUTO = {"CANARY_AUTO": "true", "CANARY_AUTO_STEPS": "10,50,100", "CANARY_AUTO_INTERVAL_SECONDS": "1",
        "CANARY_MIN_PREDICTIONS": str(MIN_LABELLED + 3 * BATCH), "CANARY_MIN_LABELLED": str(MIN_LABELLED),
        "CANARY_MAX_ROC_AUC_DROP": "0.2",
        "CANARY_MAX_JENSEN_SHANNON": "1"}  # judge on labels here: a good candidate's divergence never holds it
ROWS_PER_SECOND = 300  # a 10 % step's judgement needs ~2,400 rows: 8 s of traffic


@pytest.fixture(scope="module")
def auto_suite(trained_registry, suite_workdir):
    """Its own processes and stores; the registry is a copy of the session's, so its aliases move only here."""
    workdir = suite_workdir / "auto"
    base = base_env(workdir)
    shutil.copy(f"{trained_registry['DATA_DIR']}/mlflow.db", f"{base['DATA_DIR']}/mlflow.db")
    suite = start_suite(base, workdir, **AUTO)
    yield suite
    stop_suite(suite)


class Traffic(threading.Thread):
    """PredictBatch calls of BATCH customers at ROWS_PER_SECOND (Envoy routes each call whole to one instance, the
    canary judges rows); the rows answered two calls before get their true labels by prediction id, so they have
    reached monitoring through the outbox — a label that still comes first is unmatched, and sent again. Rows in
    monitoring without their label: at most three calls' (two held back, one whose labels are on their way)."""

    def __init__(self, suite, customers, labels):
        super().__init__(daemon=True)
        self.suite, self.customers, self.labels = suite, customers, labels
        self.predictions = 0
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self):
        _, inference, monitoring = self.suite.stubs()
        metadata = self.suite.md(self.suite.service_token)
        answered: list[list[monitoring_pb2.FeedbackRow]] = []
        unmatched: list[monitoring_pb2.FeedbackRow] = []
        start, due = 0, time.monotonic()
        while not self.done.wait(max(0.0, due - time.monotonic())):
            batch = [(start + i) % len(self.customers) for i in range(BATCH)]
            start, due = start + BATCH, max(due, time.monotonic()) + BATCH / ROWS_PER_SECOND  # no catching up
            try:
                answer = inference.PredictBatch(inference_pb2.PredictBatchRequest(
                    customers=[self.customers[i] for i in batch]), metadata=metadata, timeout=10)
            except grpc.RpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
                continue
            self.predictions += len(answer.predictions)
            answered.append([monitoring_pb2.FeedbackRow(prediction_id=p.prediction_id, churned=bool(self.labels[i]))
                             for i, p in zip(batch, answer.predictions)])
            if len(answered) > 2:
                rows = unmatched + answered.pop(0)
                report = monitoring.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(rows=rows),
                                                   metadata=metadata, timeout=10)
                early = set(report.unmatched_ids)
                unmatched = [r for r in rows if r.prediction_id in early]


def shuffled_labels_csv() -> bytes:
    data = parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6)
    frame = data.frame.assign(Churn=np.random.default_rng(12).permutation(
        data.churn.map({True: "Yes", False: "No"}).to_numpy()))
    return frame.to_csv(index=False).encode()


def retrain(suite, ops, request: monitoring_pb2.RetrainRequest) -> str:
    _, _, monitoring = suite.stubs()
    run = monitoring.Retrain(request, metadata=ops, timeout=60).run
    deadline = time.monotonic() + 300
    while run.state == monitoring_pb2.TRAINING_STATE_RUNNING and time.monotonic() < deadline:
        time.sleep(1)
        run = monitoring.GetTrainingRun(monitoring_pb2.GetTrainingRunRequest(run_id=run.run_id), metadata=ops,
                                        timeout=10).run
    assert run.state == monitoring_pb2.TRAINING_STATE_SUCCEEDED and not run.error, run
    return run.model_version


def automatic_events(suite, ops) -> list[monitoring_pb2.ModelEvent]:
    """The automatic canary's events, oldest first."""
    _, _, monitoring = suite.stubs()
    events = monitoring.ListModelEvents(monitoring_pb2.ListModelEventsRequest(page_size=200), metadata=ops,
                                        timeout=10).events
    return [e for e in reversed(events) if e.actor == "monitoring:canary"]


def canary_steps(suite, ops, version: str, until, timeout: float = 180) -> list[int]:
    """The automatic weight changes for `version`, oldest first, once `until(those weights)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        steps = [e.canary_percent for e in automatic_events(suite, ops)
                 if e.kind == monitoring_pb2.MODEL_EVENT_KIND_CANARY_WEIGHT and f"version {version} " in e.detail]
        if until(steps) or time.monotonic() > deadline:
            return steps
        time.sleep(1)


def promotion(suite, ops, version: str, timeout: float = 120) -> monitoring_pb2.ModelEvent | None:
    """The automatic canary's PROMOTE event for `version`, once there is one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in automatic_events(suite, ops)
                 if e.kind == monitoring_pb2.MODEL_EVENT_KIND_PROMOTE and e.model_version == version]
        if found:
            return found[0]
        time.sleep(1)
    return None


def test_bad_candidate_rolled_back_and_good_one_reaches_100_with_no_failed_prediction(auto_suite, customers,
                                                                                    record_property):
    admin = auto_suite.admin_token()
    ops = auto_suite.md(admin, key="ops")
    _, inference, monitoring = auto_suite.stubs()
    traffic = Traffic(auto_suite, customers, parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6).churn.tolist())
    traffic.start()
    try:
        upload = monitoring.UploadTrainingData(monitoring_pb2.UploadTrainingDataRequest(
            name="shuffled labels", csv={"content_type": "text/csv", "data": shuffled_labels_csv()}),
            metadata=ops, timeout=60)
        bad = retrain(auto_suite, ops, monitoring_pb2.RetrainRequest(dataset_ids=[upload.dataset_id]))
        assert canary_steps(auto_suite, ops, bad, lambda s: s[-1:] == [0]) == [10, 0]
        good = retrain(auto_suite, ops, monitoring_pb2.RetrainRequest(include_shipped_data=True))
        assert canary_steps(auto_suite, ops, good, lambda s: s[-1:] == [100]) == [10, 50, 100]
        promoted = promotion(auto_suite, ops, good)
        assert promoted is not None and promoted.detail.startswith(f"production {promoted.previous_version} -> "
                                                                   f"{good}; auto canary: ok: "), promoted
        registry = R.ModelRegistry(mlflow_config.tracking_uri(auto_suite.settings), auto_suite.settings.model_name)
        assert (registry.version_for(R.ALIAS_PRODUCTION), registry.version_for(R.ALIAS_PREVIOUS)) == (
            good, promoted.previous_version)
        # Promote settles after the event: production reloads (with monitoring's own credential), then weight 0
        deadline = time.monotonic() + 120
        while monitoring.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=ops,
                                         timeout=5).percent != 0:
            assert time.monotonic() < deadline, "the automatic promote never set the weight back to 0"
            time.sleep(0.5)
        answer = inference.Predict(inference_pb2.PredictRequest(customer=customers[0]),
                                   metadata=auto_suite.md(auto_suite.service_token), timeout=10)
        assert (answer.prediction.model.alias, answer.prediction.model.version) == ("production", good)
        assert canary_steps(auto_suite, ops, good, lambda s: True) == [10, 50, 100]  # nothing more for it
    finally:
        traffic.done.set()
        traffic.join(timeout=30)
    events = monitoring.ListModelEvents(monitoring_pb2.ListModelEventsRequest(page_size=200), metadata=ops,
                                        timeout=10).events
    rolled_back = next(e for e in events if e.actor == "monitoring:canary" and f"version {bad} rolled back" in e.detail)
    assert "failed: live ROC AUC" in rolled_back.detail
    assert traffic.predictions > 1000 and traffic.failures == [], (traffic.predictions, traffic.failures[:5])
    record_property("auto_canary", {"predictions": traffic.predictions, "failures": len(traffic.failures), "bad": bad,
                                    "good": good, "promoted_from": promoted.previous_version})
