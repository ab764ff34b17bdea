"""True labels for logged predictions: by prediction id, or by customer id (that customer's latest prediction),
as rows or as a CSV upload (the seed's feedback file).

A problem with the whole request (nothing sent, both forms sent, not UTF-8, no id or label column) is
INVALID_ARGUMENT naming it; a problem with one row rejects that row only and is reported with its row/line, field
and reason, so one typo never throws away a thousand good labels. The CSV may carry extra columns (a labelled
Telco export works as is).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from churn.v1 import monitoring_pb2

from services.common import features as F
from services.common.errors import InvalidInput, ResourceExhausted
from services.common.telco_csv import parse_telco_csv, read_csv
from services.monitoring.store import LabelledRow, MonitoringStore

PREDICTION_ID_COLUMN = "prediction_id"
LABELS = {"yes": True, "no": False}
MAX_REPORTED_IDS = 1000  # the counts stay exact; the id lists are capped so a bad file gives a readable answer
DEFAULT_LIMIT, MAX_LIMIT = 50, 10_000


@dataclasses.dataclass(frozen=True)
class LabelRow:
    row: int  # 1-based row, or the CSV line number
    prediction_id: str
    customer_id: str
    churned: bool


@dataclasses.dataclass
class FeedbackReport:
    matched: int = 0
    unmatched: int = 0
    unmatched_ids: list[str] = dataclasses.field(default_factory=list)
    errors: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)  # (row, field, reason)

    @property
    def rejected(self) -> int:
        return len(self.errors)


def rows_from_messages(rows: Sequence[monitoring_pb2.FeedbackRow]) -> tuple[list[LabelRow], list]:
    """FeedbackRow messages → (valid label rows, row errors). prediction_id wins when both ids are given."""
    good, errors = [], []
    for i, row in enumerate(rows, start=1):
        if not row.prediction_id and not row.customer_id:
            errors.append((i, "prediction_id", "give prediction_id or customer_id"))
        elif not row.HasField("churned"):
            errors.append((i, "churned", "is required"))
        else:
            good.append(LabelRow(i, row.prediction_id.strip(), row.customer_id.strip(), row.churned))
    return good, errors


def rows_from_csv(data: bytes, max_rows: int, max_bytes: int | None = None) -> tuple[list[LabelRow], list]:
    """A feedback CSV → (valid label rows, row errors); line 1 is the header."""
    if not data.strip():
        raise InvalidInput("csv", "the CSV is empty")
    table = read_csv(data, max_bytes, max_rows)
    header = table.header
    id_column = next((c for c in (PREDICTION_ID_COLUMN, F.ID_COLUMN) if c in header), None)
    if id_column is None:
        raise InvalidInput("csv line 1", f"needs a {PREDICTION_ID_COLUMN} or {F.ID_COLUMN} column")
    if F.LABEL_COLUMN not in header:
        raise InvalidInput("csv line 1", f"needs a {F.LABEL_COLUMN} column (Yes/No)")
    if not table.rows:
        raise InvalidInput("csv", "no data rows after the header")
    id_at, label_at = header.index(id_column), header.index(F.LABEL_COLUMN)
    by_prediction = id_column == PREDICTION_ID_COLUMN
    good, errors = [], []
    for fields, line in zip(table.rows, table.lines):
        if len(fields) != len(header):
            errors.append((line, "csv", f"has {len(fields)} fields, the header has {len(header)}"))
            continue
        key, label = fields[id_at].strip(), fields[label_at].strip()
        if not key:
            errors.append((line, id_column, "is empty"))
        elif label.lower() not in LABELS:
            errors.append((line, F.LABEL_COLUMN, f"must be Yes or No, got {label[:40]!r}"))
        else:
            good.append(LabelRow(line, key if by_prediction else "", "" if by_prediction else key,
                                 LABELS[label.lower()]))
    return good, errors


class FeedbackService:
    def __init__(self, store: MonitoringStore, max_bytes: int, max_rows: int):
        self._store = store
        self._max_bytes = max_bytes
        self._max_rows = max_rows

    def submit(self, rows: Sequence[monitoring_pb2.FeedbackRow], csv_body: bytes | None) -> FeedbackReport:
        if rows and csv_body is not None:
            raise InvalidInput("csv", "send rows or a CSV body, not both")
        if csv_body is not None:
            labels, errors = rows_from_csv(csv_body, self._max_rows, self._max_bytes)
        else:
            if not rows:
                raise InvalidInput("rows", "no feedback: send rows or a CSV body")
            if len(rows) > self._max_rows:
                raise ResourceExhausted(f"{len(rows)} feedback rows, the limit is {self._max_rows}")
            labels, errors = rows_from_messages(rows)
        return self._apply(labels, errors)

    def _apply(self, labels: list[LabelRow], errors: list) -> FeedbackReport:
        known = self._store.existing_prediction_ids(r.prediction_id for r in labels if r.prediction_id)
        latest = self._store.latest_prediction_for_customers(r.customer_id for r in labels if not r.prediction_id)
        report = FeedbackReport(errors=errors)
        to_save: dict[str, bool] = {}
        for row in labels:
            if row.prediction_id:
                target = row.prediction_id if row.prediction_id in known else None
            else:
                target = latest.get(row.customer_id)
            if target is None:
                report.unmatched += 1
                if len(report.unmatched_ids) < MAX_REPORTED_IDS:
                    report.unmatched_ids.append(row.prediction_id or row.customer_id)
                continue
            report.matched += 1
            to_save[target] = row.churned  # the same prediction twice in one request: the later row wins
        self._store.save_feedback(to_save)
        return report

    def data(self, limit: int, model_version: str) -> list[LabelledRow]:
        if limit < 0 or limit > MAX_LIMIT:
            raise InvalidInput("limit", f"must be between 1 and {MAX_LIMIT} (0 = default {DEFAULT_LIMIT}), "
                                        f"got {limit}")
        return self._store.labelled(limit or DEFAULT_LIMIT, model_version)


def upload_training_data(store: MonitoringStore, data: bytes, name: str, max_bytes: int, max_rows: int):
    """A labelled Telco CSV → a stored reference/training set. Training data needs labels, so a missing Churn
    column or a blank label is refused (the drift reference ignores Churn)."""
    if not data.strip():
        raise InvalidInput("csv", "the CSV is empty")
    if len(name) > 256:
        raise InvalidInput("name", "longer than 256 characters")
    parsed = parse_telco_csv(data, max_bytes=max_bytes, max_rows=max_rows)
    if parsed.churn is None:
        raise InvalidInput("csv line 1", f"missing column {F.LABEL_COLUMN}: training data needs labels (Yes/No)")
    blank = parsed.churn.isna().to_numpy()
    if blank.any():
        line = parsed.lines[int(blank.argmax())]
        raise InvalidInput(f"csv line {line}: {F.LABEL_COLUMN}", "is blank: training data needs a label per row")
    return store.references.save(parsed.frame, parsed.churn, name.strip())
