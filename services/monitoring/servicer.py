"""MonitoringService RPCs: unpack the request, call the injected domain object, pack the reply. Nothing else —
validation, storage, Evidently, MLflow and Envoy live in the domain modules, errors are mapped by the interceptor."""
from __future__ import annotations

import dataclasses
import datetime as dt

from churn.v1 import common_pb2, monitoring_pb2, monitoring_pb2_grpc
from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from services.common import identity
from services.common.errors import InvalidInput
from services.common.model_registry import ModelRegistry
from services.common.settings import Settings
from services.monitoring import listing
from services.monitoring import metrics as M
from services.monitoring.auto_canary import AutoCanary
from services.monitoring.canary import CanaryControl
from services.monitoring.canary_analysis import CanaryAnalyzer, Side
from services.monitoring.drift import DriftAnalyzer, DriftResult
from services.monitoring.drift_retrain import DriftRetrain
from services.monitoring.feedback import FeedbackService, upload_training_data
from services.monitoring.lifecycle import Actor, Lifecycle
from services.monitoring.lifecycle_store import LifecycleStore, TrainingRun
from services.monitoring.predictions import PredictionLog
from services.monitoring.retrain import RetrainSpec, Trainer
from services.monitoring.store import MonitoringStore


def _ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _time(request, field: str) -> dt.datetime | None:
    """A request's optional timestamp; one the protobuf library refuses (nanos out of range, before year 1 or after
    9999) is the caller's mistake, named."""
    if not request.HasField(field):
        return None
    try:
        return getattr(request, field).ToDatetime(tzinfo=dt.timezone.utc)
    except (ValueError, OverflowError):
        raise InvalidInput(field, "is not a valid timestamp (seconds within years 1-9999, nanos 0-999,999,999)") \
            from None


def _feedback_reply(report) -> monitoring_pb2.SubmitFeedbackResponse:
    return monitoring_pb2.SubmitFeedbackResponse(
        matched=report.matched, unmatched=report.unmatched, rejected=report.rejected,
        unmatched_ids=report.unmatched_ids,
        errors=[monitoring_pb2.RowError(row=row, field=field, reason=reason) for row, field, reason in report.errors])


def _actor() -> Actor:
    caller = identity.current_caller()  # every lifecycle RPC needs a token, so the interceptor has set it
    return Actor(caller.subject, caller.token)


def _run(run: TrainingRun) -> monitoring_pb2.TrainingRun:
    return monitoring_pb2.TrainingRun(
        run_id=run.run_id, state=monitoring_pb2.TrainingState.Value(f"TRAINING_STATE_{run.state.upper()}"),
        progress=run.progress, message=run.message, log_tail=run.log_tail, started_by=run.started_by,
        started_at=_ts(run.started_at), finished_at=_ts(run.finished_at), model_version=run.model_version,
        parent_version=run.parent_version, datasets=[monitoring_pb2.DatasetLineage(**d) for d in run.datasets],
        rows=run.rows, flavor=run.flavor, metrics=run.metrics, error=run.error)


def _side(side: Side, name: str) -> monitoring_pb2.CanarySide:
    return monitoring_pb2.CanarySide(
        model=common_pb2.ModelRef(name=name, version=side.version, alias=side.alias), predictions=side.predictions,
        error_rate=side.error_rate, latency_p50_ms=side.latency_p50_ms, latency_p99_ms=side.latency_p99_ms,
        mean_probability=side.mean_probability, labelled=side.labelled, accuracy=side.accuracy,
        roc_auc=side.roc_auc)


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
    shadow: CanaryControl
    runs: LifecycleStore
    lifecycle: Lifecycle
    trainer: Trainer
    analyzer: CanaryAnalyzer
    drift_retrain: DriftRetrain
    auto_canary: AutoCanary


class MonitoringServicer(monitoring_pb2_grpc.MonitoringServiceServicer):
    def __init__(self, parts: MonitoringParts):
        self._p = parts

    def RecordPredictions(self, request, context):
        result = self._p.predictions.record(request.records, request.batches)
        M.RECORDS.labels("inserted").inc(result.inserted)
        M.RECORDS.labels("duplicate").inc(result.duplicates)
        M.RECORDS.labels("dead_letter").inc(result.dead_lettered)
        return monitoring_pb2.RecordPredictionsResponse(received=result.received, inserted=result.inserted,
                                                        duplicates=result.duplicates)

    def SubmitFeedback(self, request, context):
        body = request.csv.data if request.HasField("csv") else None
        return _feedback_reply(self._p.feedback.submit(list(request.rows), body))

    def SubmitFeedbackCsv(self, request, context):
        return _feedback_reply(self._p.feedback.submit([], request.csv.data))

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
        percent, previous = self._p.lifecycle.set_weight(request.percent, _actor())
        return monitoring_pb2.SetCanaryWeightResponse(percent=percent, previous=previous)

    def GetShadowPercent(self, request, context):
        return monitoring_pb2.GetShadowPercentResponse(percent=self._p.shadow.get())

    def SetShadowPercent(self, request, context):
        percent, previous = self._p.lifecycle.set_shadow(request.percent, _actor())
        return monitoring_pb2.SetShadowPercentResponse(percent=percent, previous=previous)

    def UploadTrainingData(self, request, context):
        record = upload_training_data(self._p.store, request.csv.data, request.name, self._p.settings.max_message_bytes,
                                      self._p.settings.max_csv_rows)
        return monitoring_pb2.UploadTrainingDataResponse(
            dataset_id=record.dataset_id, rows=record.rows, created_at=_ts(record.created_at),
            churn_rows=record.churn_rows)

    def Retrain(self, request, context):
        run = self._p.trainer.start(RetrainSpec(request.include_shipped_data, [i.strip() for i in request.dataset_ids],
                                                request.include_feedback, request.flavor), _actor())
        return monitoring_pb2.RetrainResponse(run=_run(run))

    def GetTrainingRun(self, request, context):
        return monitoring_pb2.GetTrainingRunResponse(run=_run(self._p.trainer.get(request.run_id)))

    def Promote(self, request, context):
        change = self._p.lifecycle.promote(request.version.strip(), _actor())
        return monitoring_pb2.PromoteResponse(production_version=change.production_version,
                                              previous_version=change.other_version, changed=change.changed,
                                              canary_percent=change.canary_percent)

    def Rollback(self, request, context):
        change = self._p.lifecycle.rollback(_actor())
        return monitoring_pb2.RollbackResponse(production_version=change.production_version,
                                               rolled_back_version=change.other_version, changed=change.changed,
                                               canary_percent=change.canary_percent)

    def ListModelEvents(self, request, context):
        events, token = listing.list_events(self._p.runs, request.page_size, request.page_token)
        return monitoring_pb2.ListModelEventsResponse(next_page_token=token, events=[monitoring_pb2.ModelEvent(
            event_id=e.seq, kind=monitoring_pb2.ModelEventKind.Value(f"MODEL_EVENT_KIND_{e.kind.upper()}"),
            actor=e.actor, at=_ts(e.at), model_version=e.model_version, previous_version=e.previous_version,
            run_id=e.run_id, canary_percent=e.canary_percent or 0, detail=e.detail,
            shadow_percent=e.shadow_percent or 0) for e in events])

    def ListPredictions(self, request, context):
        rows, token = listing.list_predictions(
            self._p.store, start=_time(request, "start_time"), end=_time(request, "end_time"),
            model_version=request.model_version.strip(), alias=request.alias.strip(),
            customer_id=request.customer_id.strip(), shadow=request.shadow if request.HasField("shadow") else None,
            size=request.page_size, token=request.page_token)
        return monitoring_pb2.ListPredictionsResponse(next_page_token=token, predictions=[
            monitoring_pb2.LoggedPrediction(record=monitoring_pb2.PredictionRecord(
                prediction_id=r.row.prediction_id, customer=customer, churn=r.row.churn,
                probability=r.row.probability, latency_ms=r.row.latency_ms, predicted_at=_ts(r.row.predicted_at),
                request_id=r.row.request_id, shadow=r.row.shadow,
                model=common_pb2.ModelRef(name=r.row.model_name, version=r.row.model_version,
                                          alias=r.row.model_alias)), actual_churn=r.actual_churn)
            for r, customer in zip(rows, listing.customers(rows))])

    def AnalyzeCanary(self, request, context):
        a = self._p.analyzer.analyze(request.window_minutes)
        return monitoring_pb2.AnalyzeCanaryResponse(
            production=_side(a.production, self._p.settings.model_name),
            staging=_side(a.staging, self._p.settings.model_name), jensen_shannon=a.jensen_shannon, psi=a.psi,
            verdict=monitoring_pb2.CanaryVerdict.Value(f"CANARY_VERDICT_{a.verdict.upper()}"), reasons=a.reasons,
            thresholds=monitoring_pb2.CanaryThresholds(**dataclasses.asdict(a.thresholds)),
            window_start=_ts(a.window_start), shadow=a.shadow)
