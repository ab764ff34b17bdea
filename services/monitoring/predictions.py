"""RecordPredictions: check the outbox's records by the shared rules, store the valid ones idempotently by
prediction id and dead-letter the rest.

Inputs are stored in CSV spelling through the feature module's own conversion (`customer_to_csv_row`), so the
prediction log, the training reference and uploaded sets all read back as the same Telco frame.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging

from churn.v1 import monitoring_pb2

from services.common import features as F
from services.common import prediction_record
from services.common.errors import InvalidInput, ResourceExhausted
from services.common.logs import fields
from services.common.telco_csv import customer_to_csv_row
from services.monitoring import metrics as M
from services.monitoring.store import DeadLetter, MonitoringStore, PredictionRow, RowsRefused, utcnow

log = logging.getLogger("churn.monitoring.predictions")


@dataclasses.dataclass(frozen=True)
class RecordResult:
    received: int
    inserted: int
    dead_lettered: int = 0

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted - self.dead_lettered


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


def _letter(record: monitoring_pb2.PredictionRecord, field: str, reason: str) -> DeadLetter:
    return DeadLetter(record.prediction_id, field, reason, record.SerializeToString())


class PredictionLog:
    def __init__(self, store: MonitoringStore, max_rows: int):
        self._store = store
        self._max_rows = max_rows

    def record(self, records: list[monitoring_pb2.PredictionRecord]) -> RecordResult:
        """Store the valid records idempotently; a record that breaks the shared rules (or that the database
        refuses) goes to the dead-letter table with its reason, so one poison record never blocks its batch. The
        whole batch is refused only when it is empty or too large (the sender's mistake, not a record's)."""
        if not records:
            raise InvalidInput("records", "no records in the batch")
        if len(records) > self._max_rows:
            raise ResourceExhausted(f"batch has {len(records)} records, the limit is {self._max_rows}")
        good, letters = [], []
        for i, record in enumerate(records):
            found = prediction_record.problems(record, f"records[{i}]")
            if found:
                letters.append(_letter(record, *found[0]))
            else:
                good.append(record)
        inserted = self._insert(good, letters)
        if letters:
            self._store.dead_letter(letters)
            for letter in letters:
                M.DEAD_LETTERS.labels(_field_class(letter.field)).inc()
            log.warning("prediction records dead-lettered", extra=fields(
                count=len(letters), first_field=letters[0].field, first_reason=letters[0].reason))
        return RecordResult(received=len(records), inserted=inserted, dead_lettered=len(letters))

    def _insert(self, records: list[monitoring_pb2.PredictionRecord], letters: list[DeadLetter]) -> int:
        """Insert; when the database refuses the batch for its data, split it in halves until the refused rows
        are alone, and dead-letter those."""
        if not records:
            return 0
        try:
            return self._store.record_predictions([to_row(r) for r in records])
        except RowsRefused as refused:
            if len(records) == 1:
                letters.append(_letter(records[0], "record", f"refused by the store: {refused}"))
                return 0
            middle = len(records) // 2
            return self._insert(records[:middle], letters) + self._insert(records[middle:], letters)


def _field_class(field: str) -> str:
    """`records[3].customer.tenure` -> `customer.tenure`: a metric label with a bounded set of values."""
    return field.partition(".")[2] or field
