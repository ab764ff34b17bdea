"""Telco-format CSV: parsing with line-numbered errors, and the proto <-> CSV-spelling conversions.

The "cleaned frame" every caller shares has the Telco columns in CSV spelling, typed as `pd.read_csv` would type the
original file: categoricals and Yes/No columns as str, SeniorCitizen and tenure as int64, the charges as float64,
with a blank TotalCharges kept as NaN (the blank rule in `features.fill_blank_total_charges` applies at encoding,
so the reference data for drift stays raw). Ids and labels travel beside the frame, not in it.

CSV decisions: a header row is required; `customerID` is optional (absent -> empty ids) and `Churn` is optional
(Yes/No, or blank for unknown); column order is free, unknown columns are rejected (a typo would otherwise silently
drop a feature); blank lines are skipped; UTF-8 only (a BOM is accepted); line 1 is the header.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from churn.v1 import common_pb2

from services.common import features as F
from services.common.errors import InvalidInput, ResourceExhausted

_DTYPES = {f.column: ("int64" if f.name in ("tenure", "senior_citizen") else
                      "float64" if f.kind == F.NUMERIC else object) for f in F.FEATURES}
KNOWN_COLUMNS = (F.ID_COLUMN, *F.FEATURE_COLUMNS, F.LABEL_COLUMN)


@dataclass
class TelcoCsv:
    """A parsed CSV: `frame` (the cleaned feature frame, see module doc), `customer_ids` (str per row, "" when the
    CSV has no customerID column), `churn` (None without a Churn column, else a nullable boolean Series) and
    `lines` (the CSV line number of each row, for error messages downstream)."""

    frame: pd.DataFrame
    customer_ids: list[str]
    churn: pd.Series | None
    lines: list[int]

    def __len__(self) -> int:
        return len(self.frame)

    def encode(self) -> np.ndarray:
        return F.encode_frame(self.frame, line_of=lambda r: f"csv line {self.lines[r]}")

    def customers(self) -> list[common_pb2.Customer]:
        return frame_to_customers(self.frame, self.customer_ids)


def parse_telco_csv(data: bytes, max_bytes: int, max_rows: int) -> TelcoCsv:
    """Validate and parse a Telco-format CSV. Errors: oversize -> ResourceExhausted; not UTF-8, bad header, a row
    with the wrong number of fields or a bad value, or no data rows -> InvalidInput naming the line and column."""
    if len(data) > max_bytes:
        raise ResourceExhausted(f"CSV is {len(data)} bytes, the limit is {max_bytes}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InvalidInput(f"csv line {line}", "is not valid UTF-8") from None
    if "\x00" in text:
        raise InvalidInput(f"csv line {text[:text.index(chr(0))].count(chr(10)) + 1}", "contains a NUL byte")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InvalidInput("csv line 1", "the CSV is empty: a header row is required")
        header = [h.strip() for h in header]
        _check_header(header)
        rows, lines, line = [], [], reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(fields) != len(header):
                raise InvalidInput(f"csv line {start}", f"has {len(fields)} fields, the header has {len(header)}")
            if len(rows) >= max_rows:
                raise ResourceExhausted(f"CSV has more than {max_rows} rows")
            rows.append(fields)
            lines.append(start)
    except csv.Error as e:
        raise InvalidInput(f"csv line {reader.line_num}", f"malformed CSV: {e}") from None
    if not rows:
        raise InvalidInput("csv", "no data rows after the header")
    raw = pd.DataFrame(rows, columns=header, dtype=object)
    return _clean(raw, lines)


def _check_header(header: list[str]) -> None:
    dupes = sorted({h for h in header if header.count(h) > 1})
    unknown = [h for h in header if h not in KNOWN_COLUMNS]
    missing = [c for c in F.FEATURE_COLUMNS if c not in header]
    problems = [f"{label}: {', '.join(cols)}" for label, cols in
                (("missing columns", missing), ("unknown columns", unknown), ("duplicate columns", dupes)) if cols]
    if problems:
        raise InvalidInput("csv line 1", "; ".join(problems))


def _clean(raw: pd.DataFrame, lines: list[int]) -> TelcoCsv:
    """Validate every value through the encoder (one rule set), then type the columns."""
    F.encode_frame(raw, line_of=lambda r: f"csv line {lines[r]}")
    frame = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    for f in F.FEATURES:
        col = raw[f.column].str.strip()
        if f.kind == F.NUMERIC:
            frame[f.column] = pd.to_numeric(col.mask(col == "")).astype(_DTYPES[f.column])
        elif f.name == "senior_citizen":
            frame[f.column] = col.astype("int64")
        else:
            frame[f.column] = col
    ids = raw[F.ID_COLUMN].str.strip().tolist() if F.ID_COLUMN in raw.columns else [""] * len(raw)
    churn = None
    if F.LABEL_COLUMN in raw.columns:
        labels = raw[F.LABEL_COLUMN].str.strip()
        bad = ~labels.isin(["Yes", "No", ""])
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise InvalidInput(f"csv line {lines[r]}: {F.LABEL_COLUMN}",
                               f"unknown value {labels.iloc[r]!r}, expected 'Yes', 'No' or blank")
        churn = labels.map({"Yes": True, "No": False, "": None}).astype("boolean")
    return TelcoCsv(frame, ids, churn, lines)


# ---- proto <-> CSV spelling -------------------------------------------------------------------------------------
def customer_to_csv_row(customer: common_pb2.Customer) -> dict[str, object]:
    """One Customer as {CSV column: value in CSV spelling}, customerID first; absent fields -> None (blank)."""
    row: dict[str, object] = {F.ID_COLUMN: customer.customer_id}
    for f in F.FEATURES:
        value = getattr(customer, f.name)
        if f.kind == F.CATEGORICAL:
            row[f.column] = F.ENUM_TO_SPELLING[f.name].get(value)
        elif not customer.HasField(f.name):
            row[f.column] = None
        elif f.kind == F.BOOLEAN:
            row[f.column] = int(value) if f.name == "senior_citizen" else f.categories[int(value)]
        else:
            row[f.column] = value
    return row


def customers_to_frame(customers: Iterable[common_pb2.Customer]) -> pd.DataFrame:
    """Customers as a frame with customerID + the Telco columns (cleaned-frame spellings; absent -> NaN/None)."""
    rows = [customer_to_csv_row(c) for c in customers]
    frame = pd.DataFrame(rows, columns=[F.ID_COLUMN, *F.FEATURE_COLUMNS])
    for f in F.FEATURES:
        if f.kind == F.NUMERIC:
            frame[f.column] = frame[f.column].astype("float64")
    return frame


def frame_to_customers(df: pd.DataFrame, customer_ids: Sequence[str] | None = None) -> list[common_pb2.Customer]:
    """Rows in CSV spelling (the cleaned frame, or any frame with those columns) as Customer messages. Values are
    assumed valid (parse first); a NaN numeric or an unknown spelling is left absent/UNSPECIFIED."""
    if customer_ids is None:
        customer_ids = df[F.ID_COLUMN].astype(str).tolist() if F.ID_COLUMN in df.columns else [""] * len(df)
    columns = []
    for f in F.FEATURES:
        col = df[f.column]
        if f.kind == F.CATEGORICAL:
            columns.append(col.astype(str).map(F.SPELLING_TO_ENUM[f.name]).fillna(0).astype(int).tolist())
        elif f.kind == F.BOOLEAN:
            columns.append(col.astype(str).map({f.categories[0]: False, f.categories[1]: True})
                           .astype(object).where(lambda s: s.notna(), None).tolist())
        else:
            values = pd.to_numeric(col, errors="coerce")
            columns.append([None if v != v else (int(v) if f.name == "tenure" else float(v)) for v in values])
    customers = []
    for cid, values in zip(customer_ids, zip(*columns)):
        kwargs = {name: v for name, v in zip(F.FEATURE_NAMES, values) if v is not None}
        customers.append(common_pb2.Customer(customer_id=cid, **kwargs))
    return customers
