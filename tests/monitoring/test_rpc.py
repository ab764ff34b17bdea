"""Monitoring through its RPCs on a real server: idempotent logging, feedback and live accuracy (also as the
Prometheus gauge on the HTTP side port), the joined log, model versions and uploaded training data."""
from __future__ import annotations

import re
import urllib.request

import numpy as np
import pytest
from churn.v1 import monitoring_pb2
from google.api import httpbody_pb2

from services.common import features as F
from tests.monitoring.conftest import TELCO_CSV, records, service_md
from tests.natives import raw_probability


def test_the_same_1000_row_batch_three_times_stores_1000(monitoring, versions):
    customers = versions["production"].holdout.customers()[:1000]
    request = monitoring_pb2.RecordPredictionsRequest(records=records(customers, "1", "idem"))
    replies = [monitoring.stub.RecordPredictions(request, metadata=service_md(monitoring)) for _ in range(3)]
    assert [(r.received, r.inserted, r.duplicates) for r in replies] == [(1000, 1000, 0), (1000, 0, 1000),
                                                                         (1000, 0, 1000)]
    stored = monitoring.app.parts.store.count_predictions()
    assert stored >= 1000
    assert len(monitoring.app.parts.store.existing_prediction_ids(f"idem-{i}" for i in range(1000))) == 1000


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def _gauge(text: str, name: str, version: str) -> float:
    match = re.search(rf'^{name}\{{model_name="churn-model",model_version="{version}"\}} (\S+)$', text, re.M)
    assert match, f"{name} for version {version} not exported"
    return float(match.group(1))


def counted_quality(actual: np.ndarray, predicted: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    """The definitions, counted (not the scikit-learn calls the service makes): ROC AUC is the share of
    (churned, stayed) pairs in which the churned row has the higher probability, a tie counting one half."""
    tp, fp = int((predicted & actual).sum()), int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    churned, stayed = probability[actual], probability[~actual]
    pairs = churned[:, None] - stayed[None, :]
    auc = ((pairs > 0).sum() + 0.5 * (pairs == 0).sum()) / pairs.size
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {"accuracy": float((predicted == actual).mean()), "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall), "roc_auc": float(auc)}


def test_feedback_on_500_predictions_gives_the_counted_quality(monitoring, versions):
    """Real predictions of the staging version on 500 held-out rows, labelled half by prediction id (rows) and
    half by customer id (CSV upload): UpdateMetrics and the scraped gauge equal the metrics counted by hand."""
    staging = versions["staging"]
    holdout = staging.holdout
    flavor, model = staging.native()
    X = F.encode_customers(holdout.customers()[:500])
    probability = np.asarray(raw_probability(flavor, model, X), dtype=np.float64)
    predicted = probability >= 0.5
    actual = holdout.churn.iloc[:500].to_numpy(dtype=bool)
    batch = records(holdout.customers()[:500], staging.number, "acc", alias="staging", probability=probability,
                    churn=predicted)
    monitoring.stub.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(records=batch),
                                      metadata=service_md(monitoring))

    by_id = [monitoring_pb2.FeedbackRow(prediction_id=f"acc-{i}", churned=bool(actual[i])) for i in range(250)]
    reply = monitoring.stub.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(rows=by_id),
                                           metadata=monitoring.md(role="agent", ops=False))
    assert (reply.matched, reply.unmatched, reply.rejected) == (250, 0, 0)
    lines = ["customerID,Churn"] + [f"{holdout.customer_ids[i]},{'Yes' if actual[i] else 'No'}"
                                    for i in range(250, 500)]
    csv_reply = monitoring.stub.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(
        csv=httpbody_pb2.HttpBody(content_type="text/csv", data="\n".join(lines).encode())),
        metadata=monitoring.md(role="agent", ops=False))
    assert (csv_reply.matched, csv_reply.unmatched, csv_reply.rejected) == (250, 0, 0)

    updated = monitoring.stub.UpdateMetrics(monitoring_pb2.UpdateMetricsRequest(), metadata=monitoring.md(),
                                            timeout=120)
    mine = next(m for m in updated.models if m.model_version == staging.number)
    expected = counted_quality(actual, predicted, probability)
    assert mine.labelled == 500 and mine.predictions == 500
    assert mine.metrics["accuracy"] == expected["accuracy"]
    assert dict(mine.metrics) == pytest.approx(expected, rel=1e-12)
    assert mine.HasField("drift") and mine.drift.current_rows == 500 and not mine.drift.dataset_drift
    scraped = _scrape(monitoring.http_port)
    assert _gauge(scraped, "churn_monitoring_accuracy", staging.number) == expected["accuracy"]
    assert _gauge(scraped, "churn_monitoring_f1", staging.number) == pytest.approx(expected["f1"], rel=1e-12)
    assert _gauge(scraped, "churn_monitoring_roc_auc", staging.number) == pytest.approx(expected["roc_auc"], rel=1e-12)
    assert _gauge(scraped, "churn_monitoring_labelled_predictions", staging.number) == 500
    assert _gauge(scraped, "churn_monitoring_drift_share", staging.number) == mine.drift.drift_share
    assert re.search(rf'churn_monitoring_predictions\{{model_alias="staging",model_name="churn-model",'
                     rf'model_version="{staging.number}"\}} 500.0', scraped)

    joined = monitoring.stub.GetFeedbackData(monitoring_pb2.GetFeedbackDataRequest(model_version=staging.number),
                                             metadata=monitoring.md(role="agent", ops=False))
    assert len(joined.records) == 50  # the seed's default limit
    first = joined.records[0]
    assert first.prediction_id == "acc-499" and first.customer_id == holdout.customer_ids[499]
    assert first.actual_churn == actual[499] and first.predicted_churn == predicted[499]
    assert first.model.alias == "staging" and first.feedback_at.seconds > 0
    everything = monitoring.stub.GetFeedbackData(monitoring_pb2.GetFeedbackDataRequest(
        limit=10_000, model_version=staging.number), metadata=monitoring.md(role="agent", ops=False))
    assert len(everything.records) == 500

    versions_reply = monitoring.stub.ListModelVersions(monitoring_pb2.ListModelVersionsRequest(),
                                                       metadata=monitoring.md(role="agent", ops=False))
    listed = {v.version: v for v in versions_reply.versions}
    assert list(listed[staging.number].aliases) == ["staging"] and listed[staging.number].flavor == "sklearn"
    assert "roc_auc" in listed[staging.number].training_metrics
    assert listed[staging.number].live_metrics["accuracy"] == expected["accuracy"]
    assert list(listed[versions["production"].number].aliases) == ["production"]


def test_feedback_report_names_unmatched_and_rejected_rows(monitoring, versions):
    customers = versions["production"].holdout.customers()[:3]
    monitoring.stub.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(
        records=records(customers, "1", "rep")), metadata=service_md(monitoring))
    csv = ("prediction_id,Churn,note\n"
           "rep-0,Yes,ok\n"
           "rep-1,maybe,bad label\n"
           "nope-7,No,unknown id\n"
           ",No,no id\n"
           "rep-2,No\n"
           "rep-2,no,lower case is fine\n")
    reply = monitoring.stub.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(
        csv=httpbody_pb2.HttpBody(content_type="text/csv", data=csv.encode())), metadata=monitoring.md())
    assert (reply.matched, reply.unmatched, reply.rejected) == (2, 1, 3)
    assert list(reply.unmatched_ids) == ["nope-7"]
    assert [(e.row, e.field) for e in reply.errors] == [(3, "Churn"), (5, "prediction_id"), (6, "csv")]
    assert "maybe" in reply.errors[0].reason
    rows = monitoring.stub.SubmitFeedback(monitoring_pb2.SubmitFeedbackRequest(rows=[
        monitoring_pb2.FeedbackRow(prediction_id="rep-0", churned=False),
        monitoring_pb2.FeedbackRow(prediction_id="rep-1"),
        monitoring_pb2.FeedbackRow(churned=True),
        monitoring_pb2.FeedbackRow(customer_id="no-such-customer", churned=True)]), metadata=monitoring.md())
    assert (rows.matched, rows.unmatched, rows.rejected) == (1, 1, 2)
    assert list(rows.unmatched_ids) == ["no-such-customer"]
    assert [(e.row, e.field) for e in rows.errors] == [(2, "churned"), (3, "prediction_id")]


def test_upload_training_data_becomes_a_drift_reference(monitoring, versions):
    text = TELCO_CSV.read_text()
    head = "\n".join(text.splitlines()[:1001])
    reply = monitoring.stub.UploadTrainingData(monitoring_pb2.UploadTrainingDataRequest(
        csv=httpbody_pb2.HttpBody(content_type="text/csv", data=head.encode()), name="first thousand"),
        metadata=monitoring.md())
    assert reply.rows == 1000 and len(reply.dataset_id) == 32 and reply.created_at.seconds > 0
    assert reply.churn_rows == head.count(",Yes\n") + head.endswith(",Yes")
    customers = versions["production"].holdout.customers()[:200]
    monitoring.stub.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(
        records=records(customers, "1", "upl")), metadata=service_md(monitoring))
    drift = monitoring.stub.GetDriftReport(monitoring_pb2.GetDriftReportRequest(
        window=200, format="json", model_version="1", reference_id=reply.dataset_id), metadata=monitoring.md(),
        timeout=120)
    assert drift.summary.reference_rows == 1000 and drift.summary.current_rows == 200
    assert drift.summary.columns == len(F.FEATURE_COLUMNS)
