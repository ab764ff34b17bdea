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


def _kept(part: LogColumns) -> list[int]:
    return [i for i in range(len(part)) if i not in part.problems]


def _good_rows(part: LogColumns) -> PredictionBatch:
    """The rows of `part` that broke no rule, as the store takes them."""
    keep = _kept(part) if part.problems else range(len(part))

    def pick(column):
        return column if not part.problems else [column[i] for i in keep]
    index = np.asarray(keep, dtype=np.intp)
    now = utcnow()
    return PredictionBatch(
        prediction_id=pick(part.prediction_ids), customer_id=pick(part.customer_ids),
        inputs=spelled_columns(part.values[index]), churn=part.churn[index].tolist(),
        probability=part.probabilities[index].tolist(), model_name=pick(part.model_names),
        model_version=pick(part.model_versions), model_alias=pick(part.model_aliases),
        latency_ms=part.latency_ms[index].tolist(), predicted_at=[t or now for t in pick(part.predicted_at)],
        request_id=pick(part.request_ids), shadow=pick(part.shadow))


def _joined(batches: Sequence[PredictionBatch]) -> PredictionBatch:
    if len(batches) == 1:
        return batches[0]
    joined = {f.name: [v for b in batches for v in getattr(b, f.name)] for f in dataclasses.fields(PredictionBatch)
              if f.name != "inputs"}
    inputs = {name: [v for b in batches for v in b.inputs[name]] for name in batches[0].inputs}
    return PredictionBatch(inputs=inputs, **joined)


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
        parts = ([prediction_record.from_records(records)] if records else []) + [
            prediction_record.from_columns(b, i) for i, b in enumerate(batches)]
        letters: list[DeadLetter] = []
        for part in parts:
            prediction_record.check(part)
            letters += [DeadLetter(part.prediction_ids[i], field, reason, part.source(i), part.kind)
                        for i, (field, reason) in sorted(part.problems.items())]
        inserted = self._insert(_joined([_good_rows(p) for p in parts]), 0, letters, parts)
        if letters:
            self._store.dead_letter(letters)
            for letter in letters:
                M.DEAD_LETTERS.labels(_field_class(letter.field)).inc()
            log.warning("prediction records dead-lettered", extra=fields(
                count=len(letters), first_field=letters[0].field, first_reason=letters[0].reason))
        return RecordResult(received=received, inserted=inserted, dead_lettered=len(letters))

    def _insert(self, batch: PredictionBatch, offset: int, letters: list[DeadLetter],
                parts: Sequence[LogColumns]) -> int:
        """Insert; when the database refuses the batch for its data, split it in halves until the refused rows
        are alone, and dead-letter those (`offset`: where `batch` starts among the good rows of `parts`)."""
        if not len(batch):
            return 0
        try:
            return self._store.record_predictions(batch)
        except RowsRefused as refused:
            if len(batch) == 1:
                part, i = _origin(parts, offset)
                letters.append(DeadLetter(part.prediction_ids[i], "record", f"refused by the store: {refused}",
                                          part.source(i), part.kind))
                return 0
            middle = len(batch) // 2
            return (self._insert(_sliced(batch, slice(None, middle)), offset, letters, parts)
                    + self._insert(_sliced(batch, slice(middle, None)), offset + middle, letters, parts))


def _origin(parts: Sequence[LogColumns], good_row: int) -> tuple[LogColumns, int]:
    """(part, row in it) of the `good_row`-th row that broke no rule."""
    for part in parts:
        kept = _kept(part)
        if good_row < len(kept):
            return part, kept[good_row]
        good_row -= len(kept)
    raise IndexError(good_row)


def _field_class(field: str) -> str:
    """`records[3].customer.tenure` -> `customer.tenure`: a metric label with a bounded set of values."""
    return field.partition(".")[2] or field
