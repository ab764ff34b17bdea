"""The prediction log's record, written once for both sides: inference builds it (and refuses a request whose record
monitoring would refuse, so a caller cannot poison the log); monitoring reads it and checks every row by the same
rules, dead-lettering the rows that fail instead of rejecting their batch.

A record is a `PredictionColumns` message: the predictions of one request column by column, the inputs as one
float64 matrix of field values (`features.customer_values`), so a 1,000-row batch is one message with no per-row
object on either side. PredictionRecords (one prediction each) still arrive from outboxes written before it; they are
read into the same `LogColumns`. Lengths are the monitoring store's column widths; the inputs follow the feature
module's rules (`features.bad_cells`), so a logged input is always one the model could score.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Callable, Sequence

import numpy as np
from churn.v1 import common_pb2, monitoring_pb2
from google.protobuf import timestamp_pb2

from services.common import features as F
from services.common.errors import InvalidInput

MAX_ID_CHARS = 128  # prediction_id, customer_id, request_id, model name
MAX_VERSION_CHARS = 32
MAX_ALIAS_CHARS = 64
# Prediction ids: `<request id>-<row>` for an answer, `<request id>-shadow-<row>` for the shadow copy of the same
# row (services/common/shadow.py): never a duplicate of the answer, and its twin is found from its id.
SHADOW_ID_INFIX = "-shadow"
RECORD_ROWS = 500  # rows per PredictionColumns message at most: a record never outgrows a shipped batch

Violation = tuple[str, str]
_FEATURE_NAMES = list(F.FEATURE_NAMES)
_BYTE_ORDER = np.dtype("<f8")


def _id_problem(value: str, limit: int) -> str | None:
    """Too long for its column, or holding a control character (PostgreSQL refuses NUL in text outright)."""
    if len(value) > limit:
        return f"longer than {limit} characters ({len(value)})"
    if not value.isprintable():
        return "must not contain control characters"
    return None


def _all_fit(column: Sequence[str], limit: int) -> bool:
    """Every value fits `_id_problem`'s rules: the usual case, checked at C speed (a loop then names the bad ones)."""
    return max(map(len, column), default=0) <= limit and all(map(str.isprintable, column))


def check_customer_ids(customer_ids: Sequence[str], field_of) -> None:
    """InvalidInput naming every customer id the log could not store; `field_of(i)` names row i's id field."""
    if _all_fit(customer_ids, MAX_ID_CHARS):
        return
    violations = [(field_of(i), reason) for i, cid in enumerate(customer_ids)
                  if (reason := _id_problem(cid, MAX_ID_CHARS))][:F.MAX_VIOLATIONS]
    if violations:
        raise InvalidInput(*violations[0], violations=violations)


def served_twin(shadow_id: str) -> str | None:
    """The id of the served prediction a shadow row copies (None when the id is not a shadow row's)."""
    head, _, row = shadow_id.rpartition("-")
    return f"{head.removesuffix(SHADOW_ID_INFIX)}-{row}" if head.endswith(SHADOW_ID_INFIX) and row.isdigit() else None


def bounded_request_id(request_id: str) -> str:
    """A request id as the log keeps it: callers may send anything, the column holds MAX_ID_CHARS."""
    return request_id[:MAX_ID_CHARS]


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def columns_messages(prediction_ids: Sequence[str], customer_ids: Sequence[str], probabilities: np.ndarray,
                     churn: np.ndarray, values: np.ndarray, *, model: common_pb2.ModelRef, latency_ms: float,
                     predicted_at: timestamp_pb2.Timestamp, request_id: str,
                     shadow: bool = False) -> list[monitoring_pb2.PredictionColumns]:
    """One request's predictions as records of at most RECORD_ROWS rows (inputs: checked field values; `shadow`: a
    mirrored call's, logged and never answered)."""
    out = []
    for start in range(0, len(prediction_ids), RECORD_ROWS):
        rows = slice(start, start + RECORD_ROWS)
        out.append(monitoring_pb2.PredictionColumns(
            prediction_ids=prediction_ids[rows], customer_ids=customer_ids[rows],
            probabilities=probabilities[rows].tolist(), churn=churn[rows].tolist(), model=model,
            latency_ms=latency_ms, predicted_at=predicted_at, request_id=bounded_request_id(request_id),
            shadow=shadow, feature_names=_FEATURE_NAMES, feature_values=values[rows].astype(_BYTE_ORDER).tobytes()))
    return out


@dataclasses.dataclass
class LogColumns:
    """Predictions as received, column by column (one entry per row everywhere); `values` the inputs as field values
    (NaN = absent, unless `absent` tells a sent NaN apart), `where[i]` how row i is named in errors
    (`records[3]`, `batches[0][17]`) and `source(i)` the row as received, for a dead letter: (kind, serialized),
    kind "record" (a PredictionRecord) or "columns" (a one-row PredictionColumns)."""

    prediction_ids: list[str]
    customer_ids: list[str]
    probabilities: np.ndarray
    churn: np.ndarray
    model_names: list[str]
    model_versions: list[str]
    model_aliases: list[str]
    latency_ms: np.ndarray
    predicted_at: list[dt.datetime | None]  # None: the sender gave no time
    request_ids: list[str]
    shadow: list[bool]
    values: np.ndarray
    absent: np.ndarray | None
    where: list[str]
    source: Callable[[int], tuple[str, bytes]]
    problems: dict[int, Violation] = dataclasses.field(default_factory=dict)  # row -> the first rule it breaks

    def __len__(self) -> int:
        return len(self.prediction_ids)


def _when(stamp: timestamp_pb2.Timestamp, has: bool) -> tuple[dt.datetime | None, bool]:
    """(time, valid): an unset time is valid (the receiver stamps it)."""
    if not has:
        return None, True
    try:
        return stamp.ToDatetime(tzinfo=dt.timezone.utc), True
    except (ValueError, OverflowError):
        return None, False


def from_records(records: Sequence[monitoring_pb2.PredictionRecord]) -> LogColumns:
    """PredictionRecords (outboxes written before PredictionColumns) read into columns."""
    times = [_when(r.predicted_at, r.HasField("predicted_at")) for r in records]
    values, absent = F.customer_values([r.customer for r in records])
    log = LogColumns(
        prediction_ids=[r.prediction_id for r in records], customer_ids=[r.customer.customer_id for r in records],
        probabilities=np.array([r.probability for r in records], dtype=np.float64),
        churn=np.array([r.churn for r in records], dtype=bool), model_names=[r.model.name for r in records],
        model_versions=[r.model.version for r in records], model_aliases=[r.model.alias for r in records],
        latency_ms=np.array([r.latency_ms for r in records], dtype=np.float64), predicted_at=[t for t, _ in times],
        request_ids=[r.request_id for r in records], shadow=[r.shadow for r in records], values=values,
        absent=absent, where=[f"records[{i}]" for i in range(len(records))],
        source=lambda i: ("record", records[i].SerializeToString()))
    for i, record in enumerate(records):
        if not times[i][1]:
            log.problems.setdefault(i, (f"records[{i}].predicted_at", _BAD_TIME))
        if not record.HasField("customer"):
            log.problems.setdefault(i, (f"records[{i}].customer", "is required"))
    return log


_BAD_TIME = "is not a valid timestamp (years 1-9999, nanos 0-999,999,999)"


def row_of(batch: monitoring_pb2.PredictionColumns, i: int) -> monitoring_pb2.PredictionColumns:
    """Row i of a batch as a batch of its own (what a dead letter keeps of one bad row)."""
    one = monitoring_pb2.PredictionColumns()
    one.CopyFrom(batch)
    width = len(batch.feature_names) * _BYTE_ORDER.itemsize
    for name in ("prediction_ids", "customer_ids", "probabilities", "churn"):
        column = getattr(batch, name)
        one.ClearField(name)
        getattr(one, name).extend(column[i:i + 1])
    one.feature_values = batch.feature_values[i * width:(i + 1) * width]
    return one


def from_columns(batch: monitoring_pb2.PredictionColumns, b: int) -> LogColumns:
    """A PredictionColumns read as it is; a malformed one (columns of different lengths, unknown shape) marks every
    row bad rather than guessing."""
    n = len(batch.prediction_ids)
    where = [f"batches[{b}][{i}]" for i in range(n)]
    moment, valid_time = _when(batch.predicted_at, batch.HasField("predicted_at"))
    values = np.full((n, len(F.FEATURES)), np.nan)
    shape = None
    width = len(batch.feature_names)
    if len(batch.feature_values) != n * width * _BYTE_ORDER.itemsize:
        shape = "feature_values", f"holds {len(batch.feature_values)} bytes, not rows x feature_names x 8"
    elif any(len(c) != n for c in (batch.customer_ids, batch.probabilities, batch.churn)):
        shape = "prediction_ids", "customer_ids, probabilities and churn must have one entry per prediction id"
    elif len(set(batch.feature_names)) != width:
        shape = "feature_names", "must not repeat a name"
    elif list(batch.feature_names) == _FEATURE_NAMES:  # what this version writes
        values = np.frombuffer(batch.feature_values, dtype=_BYTE_ORDER).reshape(n, width).astype(np.float64)
    else:  # columns by name: a field the writer did not know stays absent, one this side does not know is ignored
        sent = np.frombuffer(batch.feature_values, dtype=_BYTE_ORDER).reshape(n, width)
        position = {name: j for j, name in enumerate(batch.feature_names)}
        for k, name in enumerate(F.FEATURE_NAMES):
            if name in position:
                values[:, k] = sent[:, position[name]]
    log = LogColumns(
        prediction_ids=list(batch.prediction_ids),
        customer_ids=list(batch.customer_ids) if shape is None else [""] * n,
        probabilities=np.array(batch.probabilities if shape is None else np.zeros(n), dtype=np.float64),
        churn=np.array(batch.churn if shape is None else np.zeros(n), dtype=bool),
        model_names=[batch.model.name] * n, model_versions=[batch.model.version] * n,
        model_aliases=[batch.model.alias] * n, latency_ms=np.full(n, batch.latency_ms), predicted_at=[moment] * n,
        request_ids=[batch.request_id] * n, shadow=[batch.shadow] * n, values=values, absent=None, where=where,
        source=lambda i: ("columns", row_of(batch, i).SerializeToString()))
    for i in range(n):
        if shape is not None:
            log.problems[i] = (f"{where[i]}.{shape[0]}", shape[1])
        elif not valid_time:
            log.problems[i] = (f"{where[i]}.predicted_at", _BAD_TIME)
    return log


def joined(parts: Sequence[LogColumns]) -> LogColumns:
    """The parts as one: checked and stored together (a shipped batch holds many one-row requests)."""
    if len(parts) == 1:
        return parts[0]
    starts = np.cumsum([0] + [len(p) for p in parts])

    def source(i: int) -> tuple[str, bytes]:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        return parts[k].source(i - int(starts[k]))

    def cat(name: str) -> list:
        return [v for p in parts for v in getattr(p, name)]
    arrays = {name: np.concatenate([getattr(p, name) for p in parts])
              for name in ("probabilities", "churn", "latency_ms")}
    absent = None if all(p.absent is None for p in parts) else np.vstack(
        [np.isnan(p.values) if p.absent is None else p.absent for p in parts])
    return LogColumns(
        **{name: cat(name) for name in ("prediction_ids", "customer_ids", "model_names", "model_versions",
                                        "model_aliases", "predicted_at", "request_ids", "shadow", "where")},
        **arrays, values=np.vstack([p.values for p in parts]), absent=absent, source=source,
        problems={int(start) + i: v for p, start in zip(parts, starts) for i, v in p.problems.items()})


def check(log: LogColumns) -> None:
    """Set `log.problems` to the first rule each row breaks, in the order: ids, model, probability, latency, time,
    customer (what the reader already found: no customer, a malformed batch), then the inputs."""
    found: dict[int, Violation] = {}

    def need(field: str, column: list[str], limit: int, required: bool = True) -> None:
        if _all_fit(column, limit) and (not required or all(column)):
            return
        for i, value in enumerate(column):
            reason = "is required" if required and not value else _id_problem(value, limit)
            if reason:
                found.setdefault(i, (f"{log.where[i]}.{field}", reason))

    need("prediction_id", log.prediction_ids, MAX_ID_CHARS)
    need("customer.customer_id", log.customer_ids, MAX_ID_CHARS, required=False)
    need("request_id", log.request_ids, MAX_ID_CHARS, required=False)
    need("model.name", log.model_names, MAX_ID_CHARS)
    need("model.version", log.model_versions, MAX_VERSION_CHARS)
    need("model.alias", log.model_aliases, MAX_ALIAS_CHARS, required=False)
    for i in np.flatnonzero(~((log.probabilities >= 0.0) & (log.probabilities <= 1.0))):
        found.setdefault(int(i), (f"{log.where[i]}.probability",
                                  f"must be within [0, 1], got {float(log.probabilities[i])!r}"))
    for i in np.flatnonzero(~(np.isfinite(log.latency_ms) & (log.latency_ms >= 0))):
        found.setdefault(int(i), (f"{log.where[i]}.latency_ms",
                                  f"must be finite and not negative, got {float(log.latency_ms[i])!r}"))
    for i, violation in log.problems.items():
        found.setdefault(i, violation)
    unchecked = np.zeros(log.values.shape, dtype=bool)
    unchecked[list(found)] = True  # a row already refused needs no more
    while True:  # bad_cells reports at most MAX_VIOLATIONS cells: repeat until every bad row is named
        cells = F.bad_cells(log.values, skip=unchecked, absent=log.absent)
        for r, i, reason in cells:
            found.setdefault(r, (f"{log.where[r]}.customer.{F.FEATURE_NAMES[i]}", reason))
            unchecked[r] = True
        if len(cells) < F.MAX_VIOLATIONS:
            break
    log.problems = found
