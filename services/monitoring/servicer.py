"""MonitoringService RPCs: unpack the request, call the injected domain object, pack the reply. Nothing else —
validation, storage, Evidently, MLflow and Envoy live in the domain modules, errors are mapped by the interceptor."""
from __future__ import annotations

import dataclasses
import datetime as dt

from churn.v1 import common_pb2, monitoring_pb2, monitoring_pb2_grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from services.common.model_registry import ModelRegistry
from services.common.settings import Settings
from services.monitoring import metrics as M
from services.monitoring.canary import CanaryControl
from services.monitoring.drift import DriftAnalyzer, DriftResult
from services.monitoring.feedback import FeedbackService, upload_training_data
from services.monitoring.predictions import PredictionLog
from services.monitoring.store import MonitoringStore


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def drift_summary(result: DriftResult | None) -> monitoring_pb2.DriftSummary | None:
    if result is None:
        return None
    return monitoring_pb2.DriftSummary(
        dataset_drift=result.dataset_drift, drift_share=result.drift_share, drifted_columns=result.drifted_columns,
        columns=result.columns, reference_rows=result.reference_rows, current_rows=result.current_rows,
        model_version=result.model_version,
        by_column=[monitoring_pb2.ColumnDrift(column=c.column, drifted=c.drifted, stat_test=c.stat_test, score=c.score)
                   for c in result.by_column])


@dataclasses.dataclass
class MonitoringParts:
    """Everything the servicer calls, built once by the app (tests build their own)."""

    settings: Settings
    store: MonitoringStore
    predictions: PredictionLog
    feedback: FeedbackService
    drift: DriftAnalyzer
    registry: ModelRegistry
    updater: M.MetricsUpdater
    canary: CanaryControl


class MonitoringServicer(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, parts: MonitoringParts):
        self._p = parts

    def RecordPredictions(self, request, context):
        result = self._p.predictions.record(list(request.records))
        M.RECORDS.labels("inserted").inc(result.inserted)
        M.RECORDS.labels("duplicate").inc(result.duplicates)
        M.RECORDS.labels("dead_letter").inc(result.dead_lettered)
        return monitoring_pb2.RecordPredictionsResponse(received=result.received, inserted=result.inserted,
                                                        duplicates=result.duplicates)

    def SubmitFeedback(self, request, context):
        body = request.csv.data if request.HasField("csv") else None
        report = self._p.feedback.submit(list(request.rows), body)
        return monitoring_pb2.SubmitFeedbackResponse(
            matched=report.matched, unmatched=report.unmatched, rejected=report.rejected,
            unmatched_ids=report.unmatched_ids,
            errors=[monitoring_pb2.RowError(row=row, field=field, reason=reason)
                    for row, field, reason in report.errors])

    def GetFeedbackData(self, request, context):
        rows = self._p.feedback.data(request.limit, request.model_version.strip())
        return monitoring_pb2.GetFeedbackDataResponse(records=[monitoring_pb2.FeedbackRecord(
            prediction_id=r.prediction_id, customer_id=r.customer_id, predicted_churn=r.churn,
            probability=r.probability, actual_churn=r.actual_churn,
            model=common_pb2.ModelRef(name=r.model_name, version=r.model_version, alias=r.model_alias),
            predicted_at=_ts(r.predicted_at), feedback_at=_ts(r.feedback_at)) for r in rows])

    def GetDriftReport(self, request, context):
        window = request.window if request.HasField("window") else None
        result = self._p.drift.run(window, request.format, request.model_version, request.reference_id.strip())
        return monitoring_pb2.GetDriftReportResponse(
            report=httpbody_pb2.HttpBody(content_type=result.content_type, data=result.body),
            summary=drift_summary(result))

    def UpdateMetrics(self, request, context):
        return monitoring_pb2.UpdateMetricsResponse(models=[monitoring_pb2.ModelVersionMetrics(
            model_version=m.model_version, predictions=m.predictions, labelled=m.labelled, metrics=m.metrics,
            drift=drift_summary(m.drift)) for m in self._p.updater.update()])

    def ListModelVersions(self, request, context):
        return monitoring_pb2.ListModelVersionsResponse(versions=[monitoring_pb2.ModelVersion(
            name=v.name, version=v.version, aliases=v.aliases, run_id=v.run_id, created_at=_ts(v.created_at),
            training_metrics=v.training_metrics, live_metrics=self._p.updater.live_metrics(v.version),
            flavor=v.flavor) for v in self._p.registry.versions()])

    def GetCanaryWeight(self, request, context):
        return monitoring_pb2.GetCanaryWeightResponse(percent=self._p.canary.get())

    def SetCanaryWeight(self, request, context):
        percent, previous = self._p.canary.set(request.percent)
        return monitoring_pb2.SetCanaryWeightResponse(percent=percent, previous=previous)

    def UploadTrainingData(self, request, context):
        record = upload_training_data(self._p.store, request.csv.data, request.name, self._p.settings.max_message_bytes,
                                      self._p.settings.max_csv_rows)
        return monitoring_pb2.UploadTrainingDataResponse(
            dataset_id=record.dataset_id, rows=record.rows, created_at=_ts(record.created_at),
            churn_rows=record.churn_rows)
