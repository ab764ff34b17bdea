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
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from churn.v1 import common_pb2

from services.common import features as F
from services.common.errors import InvalidInput, ResourceExhausted

KNOWN_COLUMNS = (F.ID_COLUMN, *F.FEATURE_COLUMNS, F.LABEL_COLUMN)
MAX_LISTED_COLUMNS = 10  # an error names this many columns at most: a 30,000-column header gets a short answer


@dataclass
class CsvTable:
    """A CSV read by `read_csv`: the stripped header, the non-blank rows as read, and each row's line number."""

    header: list[str]
    rows: list[list[str]]
    lines: list[int]


def read_csv(data: bytes, max_bytes: int | None, max_rows: int) -> CsvTable:
    """The one CSV reader (Telco files, feedback, uploads). Oversize or too many rows -> ResourceExhausted; not
    UTF-8, a NUL byte or malformed quoting -> InvalidInput naming the line. A BOM is accepted, blank lines skipped,
    line 1 is the header; rows are returned whatever their field count (callers decide what a short row means)."""
    if max_bytes is not None and len(data) > max_bytes:
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
        header = [h.strip() for h in next(reader, [])]
        rows, lines, line = [], [], reader.line_num
        for fields in reader:
            start, line = line + 1, reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            if len(rows) >= max_rows:
                raise ResourceExhausted(f"CSV has more than {max_rows} rows")
            rows.append(fields)
            lines.append(start)
    except csv.Error as e:
        raise InvalidInput(f"csv line {reader.line_num}", f"malformed CSV: {e}") from None
    return CsvTable(header, rows, lines)


@dataclass
class TelcoCsv:
    """A parsed CSV: `frame` (the cleaned feature frame, see module doc), `values` (the checked field values, as
    `features.customer_values` gives them: what the prediction log keeps), `encoded` (the model's float32 matrix,
    made once from them), `customer_ids` (str per row, "" when the CSV has no customerID column), `churn`
    (None without a Churn column, else a nullable boolean Series) and `lines` (each row's CSV line number)."""

    frame: pd.DataFrame
    values: np.ndarray
    encoded: np.ndarray
    customer_ids: list[str]
    churn: pd.Series | None
    lines: list[int]

    def __len__(self) -> int:
        return len(self.frame)

    def customers(self) -> list[common_pb2.Customer]:
        return frame_to_customers(self.frame, self.customer_ids)


def parse_telco_csv(data: bytes, max_bytes: int | None, max_rows: int) -> TelcoCsv:
    """Validate, parse and encode a Telco-format CSV. Errors: oversize -> ResourceExhausted; not UTF-8, bad header,
    a row with the wrong number of fields or a bad value, or no data rows -> InvalidInput naming line and column."""
    table = read_csv(data, max_bytes, max_rows)
    if not any(table.header):
        raise InvalidInput("csv line 1", "the CSV is empty: a header row is required")
    _check_header(table.header)
    for fields, line in zip(table.rows, table.lines):
        if len(fields) != len(table.header):
            raise InvalidInput(f"csv line {line}", f"has {len(fields)} fields, the header has {len(table.header)}")
    if not table.rows:
        raise InvalidInput("csv", "no data rows after the header")
    raw = pd.DataFrame(table.rows, columns=table.header, dtype=object)
    return _clean(raw, table.lines)


def _listed(columns: list[str]) -> str:
    shown = ", ".join(c[:40] for c in columns[:MAX_LISTED_COLUMNS])
    return shown if len(columns) <= MAX_LISTED_COLUMNS else f"{shown} and {len(columns) - MAX_LISTED_COLUMNS} more"


def _check_header(header: list[str]) -> None:
    counts = Counter(header)
    dupes = sorted(h for h, n in counts.items() if n > 1)
    unknown = [h for h in counts if h not in KNOWN_COLUMNS]
    missing = [c for c in F.FEATURE_COLUMNS if c not in counts]
    problems = [f"{label}: {_listed(cols)}" for label, cols in
                (("missing columns", missing), ("unknown columns", unknown), ("duplicate columns", dupes)) if cols]
    if problems:
        raise InvalidInput("csv line 1", "; ".join(problems))


def typed_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """The Telco columns with the cleaned-frame dtypes (`F.CSV_DTYPES`), from CSV-spelling values: strings read
    from a file, or the monitoring store's stored values. A blank numeric is NaN."""
    frame = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    for column, dtype in F.CSV_DTYPES.items():
        col = raw[column].reset_index(drop=True)
        if col.dtype == object:
            col = col.str.strip()
        if dtype == "object":
            frame[column] = col.astype(object)
            continue
        numbers = pd.to_numeric(col.mask(col == "") if col.dtype == object else col)
        frame[column] = numbers.fillna(0).astype(dtype) if dtype == "int64" else numbers.astype(dtype)
    return frame


def _clean(raw: pd.DataFrame, lines: list[int]) -> TelcoCsv:
    """Validate every value by encoding it (one rule set, the result kept), then type the columns."""
    values = F.frame_values(raw, line_of=lambda r: f"csv line {lines[r]}")
    frame = typed_frame(raw)
    ids = raw[F.ID_COLUMN].str.strip().tolist() if F.ID_COLUMN in raw.columns else [""] * len(raw)
    churn = None
    if F.LABEL_COLUMN in raw.columns:
        labels = raw[F.LABEL_COLUMN].str.strip()
        bad = ~labels.isin(["Yes", "No", ""])
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise InvalidInput(f"csv line {lines[r]}: {F.LABEL_COLUMN}",
                               f"unknown value {labels.iloc[r][:40]!r}, expected 'Yes', 'No' or blank")
        churn = labels.map({"Yes": True, "No": False, "": None}).astype("boolean")
    return TelcoCsv(frame, values, F.encode_values(values), ids, churn, lines)


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


def spelled_columns(values: np.ndarray) -> dict[str, list]:
    """Checked field values (`features.customer_values`) as {feature name: CSV-spelling values}, column by column:
    str for categoricals and booleans (SeniorCitizen "0"/"1"), float for numbers, None where absent."""
    out: dict[str, list] = {}
    for i, f in enumerate(F.FEATURES):
        column = values[:, i]
        if f.kind == F.NUMERIC:
            spelled = column.astype(object)
            spelled[np.isnan(column)] = None
        elif f.kind == F.BOOLEAN:
            spelled = np.asarray(f.categories, dtype=object)[column.astype(np.intp)]
        else:
            spelled = _SPELLING_BY_NUMBER[f.name][column.astype(np.intp)]
        out[f.name] = spelled.tolist()
    return out


_SPELLING_BY_NUMBER = {f.name: np.array([F.ENUM_TO_SPELLING[f.name].get(k) for k in range(max(f.enum_numbers) + 1)],
                                        dtype=object) for f in F.FEATURES if f.kind == F.CATEGORICAL}


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
