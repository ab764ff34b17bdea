"""RecordPredictions: validate the outbox's records and store them idempotently by prediction id.

Inputs are stored in CSV spelling through the feature module's own conversion (`customer_to_csv_row`), so the
prediction log, the training reference and uploaded sets all read back as the same Telco frame.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

from churn.v1 import monitoring_pb2

from services.common import features as F
from services.common.errors import InvalidInput, ResourceExhausted
from services.common.telco_csv import customer_to_csv_row
from services.monitoring.store import MonitoringStore, PredictionRow, utcnow

MAX_ID_LENGTH = 128


@dataclasses.dataclass(frozen=True)
class RecordResult:
    received: int
    inserted: int

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted


def to_row(record: monitoring_pb2.PredictionRecord) -> PredictionRow:
    csv_row = customer_to_csv_row(record.customer)
    inputs = {}
    for f in F.FEATURES:
        value = csv_row[f.column]
        inputs[f.name] = None if value is None else (float(value) if f.kind == F.NUMERIC else str(value))
    predicted_at = record.predicted_at.ToDatetime(tzinfo=dt.timezone.utc) if record.HasField("predicted_at") \
        else utcnow()
    return PredictionRow(
        prediction_id=record.prediction_id, customer_id=record.customer.customer_id, inputs=inputs,
        churn=record.churn, probability=record.probability, model_name=record.model.name,
        model_version=record.model.version, model_alias=record.model.alias, latency_ms=record.latency_ms,
        predicted_at=predicted_at, request_id=record.request_id, shadow=record.shadow)


def _problems(i: int, record: monitoring_pb2.PredictionRecord) -> list[tuple[str, str]]:
    where = f"records[{i}]"
    found = []
    if not record.prediction_id:
        found.append((f"{where}.prediction_id", "is required"))
    elif len(record.prediction_id) > MAX_ID_LENGTH:
        found.append((f"{where}.prediction_id", f"longer than {MAX_ID_LENGTH} characters"))
    if len(record.customer.customer_id) > MAX_ID_LENGTH:
        found.append((f"{where}.customer.customer_id", f"longer than {MAX_ID_LENGTH} characters"))
    if not record.model.name:
        found.append((f"{where}.model.name", "is required"))
    if not record.model.version:
        found.append((f"{where}.model.version", "is required"))
    if not 0.0 <= record.probability <= 1.0:
        found.append((f"{where}.probability", f"must be within [0, 1], got {record.probability!r}"))
    return found


class PredictionLog:
    def __init__(self, store: MonitoringStore, max_rows: int):
        self._store = store
        self._max_rows = max_rows

    def record(self, records: list[monitoring_pb2.PredictionRecord]) -> RecordResult:
        """All-or-nothing per batch: one bad record rejects the batch (the shipper must not lose the good ones
        silently, and a retry of a fixed batch is harmless because inserts are idempotent)."""
        if not records:
            raise InvalidInput("records", "no records in the batch")
        if len(records) > self._max_rows:
            raise ResourceExhausted(f"batch has {len(records)} records, the limit is {self._max_rows}")
        violations = [v for i, r in enumerate(records) for v in _problems(i, r)]
        if violations:
            raise InvalidInput(*violations[0], violations=violations[:F.MAX_VIOLATIONS])
        inserted = self._store.record_predictions([to_row(r) for r in records])
        return RecordResult(received=len(records), inserted=inserted)
