"""ListModelEvents and ListPredictions: checked filters and keyset paging (newest first; a page token is the
position after the last row returned, so rows arriving meanwhile never shift a page)."""
from __future__ import annotations

import base64
import datetime as dt

import pandas as pd
from churn.v1 import common_pb2

from services.common import features as F
from services.common.errors import InvalidInput
from services.common.telco_csv import frame_to_customers
from services.monitoring.lifecycle_store import LifecycleStore, ModelEvent
from services.monitoring.store import LoggedRow, MonitoringStore, PredictionFilter

DEFAULT_PAGE, MAX_PAGE = 100, 1000
MAX_FILTER_LENGTH = 128


def page_size(size: int) -> int:
    if not 0 <= size <= MAX_PAGE:
        raise InvalidInput("page_size", f"must be between 1 and {MAX_PAGE} (0 = {DEFAULT_PAGE}), got {size}")
    return size or DEFAULT_PAGE


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def decode_token(token: str) -> int | None:
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode()
        if text.startswith("seq:") and text[4:].isdigit():
            return int(text[4:])
    except (ValueError, UnicodeError):
        pass
    raise InvalidInput("page_token", "is not a token this API returned")


def _page(rows: list, size: int, seq_of) -> tuple[list, str]:
    """`size + 1` rows were read: the extra one only says whether another page exists."""
    if len(rows) > size:
        rows = rows[:size]
        return rows, encode_token(seq_of(rows[-1]))
    return rows, ""


def list_events(store: LifecycleStore, size: int, token: str) -> tuple[list[ModelEvent], str]:
    size = page_size(size)
    return _page(store.events(size + 1, decode_token(token)), size, lambda e: e.seq)


def list_predictions(store: MonitoringStore, *, start: dt.datetime | None, end: dt.datetime | None,
                     model_version: str, alias: str, customer_id: str, shadow: bool | None, size: int,
                     token: str) -> tuple[list[LoggedRow], str]:
    size = page_size(size)
    if start and end and end <= start:
        raise InvalidInput("end_time", "must be after start_time")
    for field, value in (("model_version", model_version), ("alias", alias), ("customer_id", customer_id)):
        if len(value) > MAX_FILTER_LENGTH:
            raise InvalidInput(field, f"longer than {MAX_FILTER_LENGTH} characters")
    if model_version and not model_version.isdigit():
        raise InvalidInput("model_version", "must be a model version number")
    where = PredictionFilter(start, end, model_version, alias, customer_id, shadow, decode_token(token))
    return _page(store.list_predictions(where, size + 1), size, lambda r: r.seq)


def customers(rows: list[LoggedRow]) -> list[common_pb2.Customer]:
    """The logged inputs (CSV spelling) as the Customer messages they came from."""
    frame = pd.DataFrame([[r.row.inputs[f.name] for f in F.FEATURES] for r in rows], columns=list(F.FEATURE_COLUMNS))
    return frame_to_customers(frame, [r.row.customer_id for r in rows])
