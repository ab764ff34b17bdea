"""RecordPredictions: check the outbox's records by the shared rules, store the valid rows idempotently by
prediction id and dead-letter the rest.

Records arrive column by column (`PredictionColumns`; PredictionRecords from outboxes written before it are read into
the same columns), are checked column by column and stored in one insert: no object per row on the way. Inputs are
stored in CSV spelling (`telco_csv.spelled_columns`), so the prediction log, the training reference and uploaded sets
all read back as the same Telco frame.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
from churn.v1 import monitoring_pb2

from services.common import prediction_record
from services.common.errors import InvalidInput, ResourceExhausted
from services.common.logs import fields
from services.common.prediction_record import LogColumns
from services.common.telco_csv import spelled_columns
from services.monitoring import metrics as M
from services.monitoring.store import DeadLetter, MonitoringStore, PredictionBatch, RowsRefused, utcnow

log = logging.getLogger("churn.monitoring.predictions")


@dataclasses.dataclass(frozen=True)
class RecordResult:
    received: int
    inserted: int
    dead_lettered: int = 0

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted - self.dead_lettered


def _good_rows(log: LogColumns) -> tuple[PredictionBatch, list[int]]:
    """The rows that broke no rule, as the store takes them, and their rows in `log`."""
    keep = [i for i in range(len(log)) if i not in log.problems]

    def pick(column):
        return column if len(keep) == len(log) else [column[i] for i in keep]
    index = np.asarray(keep, dtype=np.intp)
    now = utcnow()
    return PredictionBatch(
        prediction_id=pick(log.prediction_ids), customer_id=pick(log.customer_ids),
        inputs=spelled_columns(log.values[index]), churn=log.churn[index].tolist(),
        probability=log.probabilities[index].tolist(), model_name=pick(log.model_names),
        model_version=pick(log.model_versions), model_alias=pick(log.model_aliases),
        latency_ms=log.latency_ms[index].tolist(), predicted_at=[t or now for t in pick(log.predicted_at)],
        request_id=pick(log.request_ids), shadow=pick(log.shadow)), keep


def _sliced(batch: PredictionBatch, rows: slice) -> PredictionBatch:
    return PredictionBatch(inputs={k: v[rows] for k, v in batch.inputs.items()},
                           **{f.name: getattr(batch, f.name)[rows] for f in dataclasses.fields(PredictionBatch)
                              if f.name != "inputs"})


class PredictionLog:
    def __init__(self, store: MonitoringStore, max_rows: int):
        self._store = store
        self._max_rows = max_rows

    def record(self, records: Sequence[monitoring_pb2.PredictionRecord],
               batches: Sequence[monitoring_pb2.PredictionColumns] = ()) -> RecordResult:
        """Store the valid rows idempotently; a row that breaks the shared rules (or that the database refuses)
        goes to the dead-letter table with its reason, so one poison row never blocks its batch. The whole request
        is refused only when it is empty or too large (the sender's mistake, not a row's)."""
        received = len(records) + sum(len(b.prediction_ids) for b in batches)
        if not received:
            raise InvalidInput("records", "no records in the batch")
        if received > self._max_rows:
            raise ResourceExhausted(f"batch has {received} records, the limit is {self._max_rows}")
        received_log = prediction_record.joined(([prediction_record.from_records(records)] if records else [])
                                                + ([prediction_record.from_batches(batches)] if batches else []))
        prediction_record.check(received_log)
        letters = [self._letter(received_log, i, field, reason)
                   for i, (field, reason) in sorted(received_log.problems.items())]
        good, rows = _good_rows(received_log)
        inserted = self._insert(good, rows, letters, received_log)
        if letters:
            self._store.dead_letter(letters)
            for letter in letters:
                M.DEAD_LETTERS.labels(_field_class(letter.field)).inc()
            log.warning("prediction records dead-lettered", extra=fields(
                count=len(letters), first_field=letters[0].field, first_reason=letters[0].reason))
        return RecordResult(received=received, inserted=inserted, dead_lettered=len(letters))

    @staticmethod
    def _letter(log: LogColumns, i: int, field: str, reason: str) -> DeadLetter:
        kind, record = log.source(i)
        return DeadLetter(log.prediction_ids[i], field, reason, record, kind)

    def _insert(self, batch: PredictionBatch, rows: list[int], letters: list[DeadLetter], log: LogColumns) -> int:
        """Insert; when the database refuses the batch for its data, split it in halves until the refused rows
        are alone, and dead-letter those (`rows`: the batch's rows in `log`)."""
        if not len(batch):
            return 0
        try:
            return self._store.record_predictions(batch)
        except RowsRefused as refused:
            if len(batch) == 1:
                letters.append(self._letter(log, rows[0], "record", f"refused by the store: {refused}"))
                return 0
            middle = len(batch) // 2
            return (self._insert(_sliced(batch, slice(None, middle)), rows[:middle], letters, log)
                    + self._insert(_sliced(batch, slice(middle, None)), rows[middle:], letters, log))


def _field_class(field: str) -> str:
    """`records[3].customer.tenure` -> `customer.tenure`: a metric label with a bounded set of values."""
    return field.partition(".")[2] or field
