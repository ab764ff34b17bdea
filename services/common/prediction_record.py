"""The rules a prediction record meets to enter the prediction log, written once for both sides: inference refuses
a request whose record monitoring would refuse (so a caller cannot poison the log), and monitoring checks every
record it receives by the same rules, dead-lettering the ones that fail instead of rejecting their batch.

Lengths are the monitoring store's column widths; the customer's fields follow the feature module's encoding rules
(the domain bounds included), so a logged input is always one the model could score.
"""
from __future__ import annotations

import math
from typing import Sequence

from churn.v1 import monitoring_pb2

from services.common import features as F
from services.common.errors import InvalidInput

MAX_ID_CHARS = 128  # prediction_id, customer_id, request_id, model name
MAX_VERSION_CHARS = 32
MAX_ALIAS_CHARS = 64
# Prediction ids: `<request id>-<row>` for an answer, `<request id>-shadow-<row>` for the shadow copy of the same
# row (services/common/shadow.py): never a duplicate of the answer, and its twin is found from its id.
SHADOW_ID_INFIX = "-shadow"

Violation = tuple[str, str]


def _id_problem(value: str, limit: int) -> str | None:
    """Too long for its column, or holding a control character (PostgreSQL refuses NUL in text outright)."""
    if len(value) > limit:
        return f"longer than {limit} characters ({len(value)})"
    if not value.isprintable():
        return "must not contain control characters"
    return None


def check_customer_ids(customer_ids: Sequence[str], field_of) -> None:
    """InvalidInput naming every customer id the log could not store; `field_of(i)` names row i's id field."""
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


def problems(record: monitoring_pb2.PredictionRecord, where: str) -> list[Violation]:
    """Every rule `record` breaks, as (field, reason) named under `where` (e.g. `records[3]`); [] when valid."""
    found: list[Violation] = []

    def need(field: str, value: str, limit: int, required: bool = True) -> None:
        reason = "is required" if required and not value else _id_problem(value, limit)
        if reason:
            found.append((f"{where}.{field}", reason))

    need("prediction_id", record.prediction_id, MAX_ID_CHARS)
    need("customer.customer_id", record.customer.customer_id, MAX_ID_CHARS, required=False)
    need("request_id", record.request_id, MAX_ID_CHARS, required=False)
    need("model.name", record.model.name, MAX_ID_CHARS)
    need("model.version", record.model.version, MAX_VERSION_CHARS)
    need("model.alias", record.model.alias, MAX_ALIAS_CHARS, required=False)
    if not 0.0 <= record.probability <= 1.0:
        found.append((f"{where}.probability", f"must be within [0, 1], got {record.probability!r}"))
    if not (math.isfinite(record.latency_ms) and record.latency_ms >= 0):
        found.append((f"{where}.latency_ms", f"must be finite and not negative, got {record.latency_ms!r}"))
    if record.HasField("predicted_at"):
        try:
            record.predicted_at.ToDatetime()
        except (ValueError, OverflowError):
            found.append((f"{where}.predicted_at", "is not a valid timestamp (years 1-9999, nanos 0-999,999,999)"))
    if not record.HasField("customer"):
        found.append((f"{where}.customer", "is required"))
    else:
        try:
            F.encode_customers([record.customer], label=lambda _: f"{where}.customer")
        except InvalidInput as error:
            found.extend(error.violations)
    return found
