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
from bisect import bisect_right
from itertools import accumulate, chain, repeat
from typing import Callable, NamedTuple, Sequence

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
    (NaN = absent, unless `absent` tells a sent NaN apart), `where(i)` how row i is named in errors
    (`records[3]`, `batches[0][17]`) and `source(i)` the row as received, for a dead letter: (kind, serialized),
    kind "record" (a PredictionRecord) or "columns" (a one-row PredictionColumns). Both are functions: only a row
    that breaks a rule needs them."""

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
    where: Callable[[int], str]
    source: Callable[[int], tuple[str, bytes]]
    problems: dict[int, Violation] = dataclasses.field(default_factory=dict)  # row -> the first rule it breaks

    def __len__(self) -> int:
        return len(self.prediction_ids)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_SECONDS_RANGE = (-62135596800, 253402300799)  # 0001-01-01 to 9999-12-31T23:59:59, protobuf's Timestamp range


def _when(stamp: timestamp_pb2.Timestamp, has: bool) -> tuple[dt.datetime | None, bool]:
    """(time, valid): an unset time is valid (the receiver stamps it). What `stamp.ToDatetime(tzinfo=utc)` gives and
    refuses, without its Python-level checks and time-zone conversion (one per shipped record)."""
    if not has:
        return None, True
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (_SECONDS_RANGE[0] <= seconds <= _SECONDS_RANGE[1] and 0 <= nanos < 1_000_000_000):
        return None, False
    return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000), True


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
        absent=absent, where=lambda i: f"records[{i}]", source=lambda i: ("record", records[i].SerializeToString()))
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


class _Head(NamedTuple):
    """What one PredictionColumns says once for all its rows, read in one pass."""

    rows: int
    shape: Violation | None  # (field, reason): the batch is malformed, every row is bad
    standard: bool  # its feature_values are in this version's column order
    model: tuple[str, str, str]
    latency_ms: float
    moment: dt.datetime | None
    valid_time: bool
    request_id: str
    shadow: bool


def _head(batch: monitoring_pb2.PredictionColumns) -> _Head:
    n = len(batch.prediction_ids)
    names = batch.feature_names
    width = len(names)
    shape, standard = None, False
    if len(batch.feature_values) != n * width * _BYTE_ORDER.itemsize:
        shape = "feature_values", f"holds {len(batch.feature_values)} bytes, not rows x feature_names x 8"
    elif len(batch.customer_ids) != n or len(batch.probabilities) != n or len(batch.churn) != n:
        shape = "prediction_ids", "customer_ids, probabilities and churn must have one entry per prediction id"
    elif names[:] == _FEATURE_NAMES:  # what this version writes (so no name repeats)
        standard = True
    elif len(set(names)) != width:
        shape = "feature_names", "must not repeat a name"
    model = batch.model
    moment, valid_time = _when(batch.predicted_at, batch.HasField("predicted_at"))
    return _Head(n, shape, standard, (model.name, model.version, model.alias), batch.latency_ms, moment, valid_time,
                 batch.request_id, batch.shadow)


def _by_name(batch: monitoring_pb2.PredictionColumns, n: int) -> np.ndarray:
    """Columns by name: a field the writer did not know stays absent, one this side does not know is ignored."""
    values = np.full((n, len(F.FEATURES)), np.nan)
    sent = np.frombuffer(batch.feature_values, dtype=_BYTE_ORDER).reshape(n, len(batch.feature_names))
    position = {name: j for j, name in enumerate(batch.feature_names)}
    for k, name in enumerate(F.FEATURE_NAMES):
        if name in position:
            values[:, k] = sent[:, position[name]]
    return values


def _part(starts: Sequence[int], i: int) -> tuple[int, int]:
    """Which part row i of a concatenation falls in (`starts` the parts' first rows), and its row there."""
    k = bisect_right(starts, i) - 1
    return k, i - starts[k]


def _spread(column: Sequence, counts: Sequence[int]) -> list:
    """One value per batch -> one per row."""
    return list(chain.from_iterable(map(repeat, column, counts)))


def from_batches(batches: Sequence[monitoring_pb2.PredictionColumns]) -> LogColumns:
    """A request's PredictionColumns read as one set of columns, as they are: the work per batch is a few field
    reads (under single-row load a shipped request holds dozens of one-row batches), the inputs of every batch in
    this version's layout one array. A malformed batch (columns of different lengths, unknown shape) marks every row
    of it bad rather than guessing."""
    heads = [_head(b) for b in batches]
    counts = [h.rows for h in heads]
    starts = list(accumulate(counts, initial=0))
    total = starts[-1]
    ok = [h.shape is None for h in heads]
    standard = [h.standard for h in heads]
    flat = np.frombuffer(b"".join(b.feature_values for b, s in zip(batches, standard) if s), dtype=_BYTE_ORDER)
    flat = flat.reshape(-1, len(F.FEATURES)).astype(np.float64)
    if all(standard):
        values = flat
    else:
        values = np.full((total, len(F.FEATURES)), np.nan)
        values[np.repeat(standard, counts)] = flat
        for k, (batch, head) in enumerate(zip(batches, heads)):
            if head.shape is None and not head.standard:
                values[starts[k]:starts[k + 1]] = _by_name(batch, head.rows)

    def where(i: int) -> str:
        return "batches[{}][{}]".format(*_part(starts, i))

    def source(i: int) -> tuple[str, bytes]:
        k, row = _part(starts, i)
        return "columns", row_of(batches[k], row).SerializeToString()

    models = _spread([h.model for h in heads], counts)
    log = LogColumns(
        prediction_ids=[p for b in batches for p in b.prediction_ids],
        customer_ids=list(chain.from_iterable(b.customer_ids if good else repeat("", h.rows)
                                              for b, h, good in zip(batches, heads, ok))),
        probabilities=np.fromiter(chain.from_iterable(b.probabilities if good else repeat(0.0, h.rows)
                                                      for b, h, good in zip(batches, heads, ok)), np.float64, total),
        churn=np.fromiter(chain.from_iterable(b.churn if good else repeat(False, h.rows)
                                              for b, h, good in zip(batches, heads, ok)), bool, total),
        model_names=[m[0] for m in models], model_versions=[m[1] for m in models],
        model_aliases=[m[2] for m in models], latency_ms=np.repeat([h.latency_ms for h in heads], counts),
        predicted_at=_spread([h.moment for h in heads], counts),
        request_ids=_spread([h.request_id for h in heads], counts), shadow=_spread([h.shadow for h in heads], counts),
        values=values, absent=None, where=where, source=source)
    for k, head in enumerate(heads):
        field, reason = head.shape or ("predicted_at", _BAD_TIME)
        if head.shape is not None or not head.valid_time:
            for i in range(starts[k], starts[k + 1]):
                log.problems[i] = (f"batches[{k}][{i - starts[k]}].{field}", reason)
    return log


def joined(parts: Sequence[LogColumns]) -> LogColumns:
    """The parts as one: checked and stored together (a request may hold PredictionRecords and PredictionColumns)."""
    if len(parts) == 1:
        return parts[0]
    starts = list(accumulate((len(p) for p in parts), initial=0))

    def where(i: int) -> str:
        k, row = _part(starts, i)
        return parts[k].where(row)

    def source(i: int) -> tuple[str, bytes]:
        k, row = _part(starts, i)
        return parts[k].source(row)

    def cat(name: str) -> list:
        return [v for p in parts for v in getattr(p, name)]
    arrays = {name: np.concatenate([getattr(p, name) for p in parts])
              for name in ("probabilities", "churn", "latency_ms")}
    absent = None if all(p.absent is None for p in parts) else np.vstack(
        [np.isnan(p.values) if p.absent is None else p.absent for p in parts])
    return LogColumns(
        **{name: cat(name) for name in ("prediction_ids", "customer_ids", "model_names", "model_versions",
                                        "model_aliases", "predicted_at", "request_ids", "shadow")},
        **arrays, values=np.vstack([p.values for p in parts]), absent=absent,
        where=where, source=source, problems={start + i: v for p, start in zip(parts, starts) for i, v in p.problems.items()})


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
                found.setdefault(i, (f"{log.where(i)}.{field}", reason))

    need("prediction_id", log.prediction_ids, MAX_ID_CHARS)
    need("customer.customer_id", log.customer_ids, MAX_ID_CHARS, required=False)
    need("request_id", log.request_ids, MAX_ID_CHARS, required=False)
    need("model.name", log.model_names, MAX_ID_CHARS)
    need("model.version", log.model_versions, MAX_VERSION_CHARS)
    need("model.alias", log.model_aliases, MAX_ALIAS_CHARS, required=False)
    for i in np.flatnonzero(~((log.probabilities >= 0.0) & (log.probabilities <= 1.0))):
        found.setdefault(int(i), (f"{log.where(i)}.probability",
                                  f"must be within [0, 1], got {float(log.probabilities[i])!r}"))
    for i in np.flatnonzero(~(np.isfinite(log.latency_ms) & (log.latency_ms >= 0))):
        found.setdefault(int(i), (f"{log.where(i)}.latency_ms",
                                  f"must be finite and not negative, got {float(log.latency_ms[i])!r}"))
    for i, violation in log.problems.items():
        found.setdefault(i, violation)
    unchecked = np.zeros(log.values.shape, dtype=bool)
    unchecked[list(found)] = True  # a row already refused needs no more
    while True:  # bad_cells reports at most MAX_VIOLATIONS cells: repeat until every bad row is named
        cells = F.bad_cells(log.values, skip=unchecked, absent=log.absent)
        for r, i, reason in cells:
            found.setdefault(r, (f"{log.where(r)}.customer.{F.FEATURE_NAMES[i]}", reason))
            unchecked[r] = True
        if len(cells) < F.MAX_VIOLATIONS:
            break
    log.problems = found
