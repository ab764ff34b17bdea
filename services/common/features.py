"""The one feature module: the Telco schema, CSV-spelling <-> enum tables, the blank-TotalCharges rule and the
numpy encoders. Training, inference, monitoring and CSV parsing all use it, so a model always sees the columns it
was trained on in the order it was trained on.

Encoding (41 float32 columns, order = `ENCODED_COLUMNS`): features in `Customer` field order; a categorical becomes
one column per category (all kept, none dropped: trees do not care about collinearity and SHAP reads cleaner), a
boolean one 0/1 column, a numeric its value. `encode_customers` goes straight from proto messages to numpy (the
request hot path, no pandas); `encode_frame` takes a DataFrame in the Telco CSV spellings (training, drift, CSV).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from churn.v1 import common_pb2

from services.common.errors import InvalidInput, shown

CATEGORICAL, BOOLEAN, NUMERIC = "categorical", "boolean", "numeric"
MAX_VIOLATIONS = 100  # bounds the error message of a bad 10k-row batch; the first ones are the useful ones
# The input domain: generous but finite, so nothing absurd reaches a model (float32 matrices turn 1e39 into inf,
# which scikit-learn refuses and xgboost scores silently). The Telco data has tenure <= 72 months, MonthlyCharges
# <= 118.75 and TotalCharges <= 8,684.8; the bounds allow 100 years and ~840x the largest monthly bill.
MAX_TENURE_MONTHS = 1200
MAX_MONTHLY_CHARGES = 100_000.0
MAX_TOTAL_CHARGES = MAX_TENURE_MONTHS * MAX_MONTHLY_CHARGES
NUMERIC_MAX = {"tenure": MAX_TENURE_MONTHS, "monthly_charges": MAX_MONTHLY_CHARGES,
               "total_charges": MAX_TOTAL_CHARGES}

# Telco header spelling of each Customer field (the proto uses snake_case).
CSV_COLUMN = {
    "customer_id": "customerID", "gender": "gender", "senior_citizen": "SeniorCitizen", "partner": "Partner",
    "dependents": "Dependents", "tenure": "tenure", "phone_service": "PhoneService", "multiple_lines": "MultipleLines",
    "internet_service": "InternetService", "online_security": "OnlineSecurity", "online_backup": "OnlineBackup",
    "device_protection": "DeviceProtection", "tech_support": "TechSupport", "streaming_tv": "StreamingTV",
    "streaming_movies": "StreamingMovies", "contract": "Contract", "paperless_billing": "PaperlessBilling",
    "payment_method": "PaymentMethod", "monthly_charges": "MonthlyCharges", "total_charges": "TotalCharges",
}
ID_FIELD, ID_COLUMN, LABEL_COLUMN = "customer_id", "customerID", "Churn"

# CSV spelling of every enum value except UNSPECIFIED (a test checks this table against the generated descriptors).
ENUM_SPELLING = {
    "GENDER_FEMALE": "Female", "GENDER_MALE": "Male",
    "MULTIPLE_LINES_NO": "No", "MULTIPLE_LINES_YES": "Yes", "MULTIPLE_LINES_NO_PHONE_SERVICE": "No phone service",
    "INTERNET_SERVICE_DSL": "DSL", "INTERNET_SERVICE_FIBER_OPTIC": "Fiber optic", "INTERNET_SERVICE_NO": "No",
    "INTERNET_ADDON_NO": "No", "INTERNET_ADDON_YES": "Yes", "INTERNET_ADDON_NO_INTERNET_SERVICE": "No internet service",
    "CONTRACT_MONTH_TO_MONTH": "Month-to-month", "CONTRACT_ONE_YEAR": "One year", "CONTRACT_TWO_YEAR": "Two year",
    "PAYMENT_METHOD_ELECTRONIC_CHECK": "Electronic check", "PAYMENT_METHOD_MAILED_CHECK": "Mailed check",
    "PAYMENT_METHOD_BANK_TRANSFER_AUTOMATIC": "Bank transfer (automatic)",
    "PAYMENT_METHOD_CREDIT_CARD_AUTOMATIC": "Credit card (automatic)",
}
# Yes/No columns as (false, true) spellings; SeniorCitizen is 0/1 in the Telco data.
BOOL_SPELLING = {"senior_citizen": ("0", "1")}
DEFAULT_BOOL_SPELLING = ("No", "Yes")


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: `name` is the proto field, `column` the CSV header, `categories` CSV spellings in encoded
    order (for booleans: (false, true)); `enum_numbers[i]` is the proto enum number of `categories[i]`."""

    name: str
    column: str
    kind: str
    categories: tuple[str, ...] = ()
    enum_numbers: tuple[int, ...] = ()

    @property
    def encoded_names(self) -> tuple[str, ...]:
        if self.kind == CATEGORICAL:
            return tuple(f"{self.name}={c}" for c in self.categories)
        return (self.name,)


def _build_schema() -> tuple[FeatureSpec, ...]:
    specs = []
    for fd in common_pb2.Customer.DESCRIPTOR.fields:
        if fd.name == ID_FIELD:
            continue
        if fd.enum_type is not None:
            values = [v for v in fd.enum_type.values if v.number != 0]
            specs.append(FeatureSpec(fd.name, CSV_COLUMN[fd.name], CATEGORICAL,
                                     tuple(ENUM_SPELLING[v.name] for v in values), tuple(v.number for v in values)))
        elif fd.type == fd.TYPE_BOOL:
            specs.append(FeatureSpec(fd.name, CSV_COLUMN[fd.name], BOOLEAN,
                                     BOOL_SPELLING.get(fd.name, DEFAULT_BOOL_SPELLING)))
        else:
            specs.append(FeatureSpec(fd.name, CSV_COLUMN[fd.name], NUMERIC))
    return tuple(specs)


FEATURES: tuple[FeatureSpec, ...] = _build_schema()
FEATURE_NAMES = tuple(f.name for f in FEATURES)
FEATURE_COLUMNS = tuple(f.column for f in FEATURES)  # the Telco CSV columns the model reads, in order
FEATURE_BY_NAME = {f.name: f for f in FEATURES}
ENCODED_COLUMNS: tuple[str, ...] = tuple(n for f in FEATURES for n in f.encoded_names)
# ENCODED_FEATURE_INDEX[j] = index into FEATURES of encoded column j (sums SHAP values back to customer fields).
ENCODED_FEATURE_INDEX = np.array([i for i, f in enumerate(FEATURES) for _ in f.encoded_names], dtype=np.intp)
N_ENCODED = len(ENCODED_COLUMNS)
# Enum number <-> CSV spelling per categorical field.
SPELLING_TO_ENUM = {f.name: dict(zip(f.categories, f.enum_numbers)) for f in FEATURES if f.kind == CATEGORICAL}
ENUM_TO_SPELLING = {f.name: dict(zip(f.enum_numbers, f.categories)) for f in FEATURES if f.kind == CATEGORICAL}
# The cleaned Telco frame's dtypes, as `pd.read_csv` types the original file (one table for CSVs and the store).
CSV_DTYPES = {f.column: ("int64" if f.name in ("tenure", "senior_citizen") else
                         "float64" if f.kind == NUMERIC else "object") for f in FEATURES}


def fill_blank_total_charges(total: np.ndarray) -> np.ndarray:
    """THE blank-TotalCharges rule, used by every encoder: an absent/blank TotalCharges becomes 0.0.

    In the Telco data the 11 blank TotalCharges rows are exactly the tenure-0 customers, who have not been billed
    yet, so 0.0 is their true total; training saw them as 0.0 and so does every request. NaN marks the blank.
    """
    return np.where(np.isnan(total), 0.0, total)


def feature_spec() -> dict:
    """The schema as JSON-able data (logged with every model version as feature_spec.json)."""
    return {
        "features": [{"name": f.name, "column": f.column, "kind": f.kind, "categories": list(f.categories)}
                     for f in FEATURES],
        "encoded_columns": list(ENCODED_COLUMNS),
        "encoded_feature_index": ENCODED_FEATURE_INDEX.tolist(),
        "blank_total_charges": 0.0,
        "id_column": ID_COLUMN, "label_column": LABEL_COLUMN,
    }


# ---- precomputed layout for the encoders ------------------------------------------------------------------------
_OFFSETS = np.cumsum([0] + [len(f.encoded_names) for f in FEATURES])[:-1]
_CAT = [i for i, f in enumerate(FEATURES) if f.kind == CATEGORICAL]
_DIRECT = [i for i, f in enumerate(FEATURES) if f.kind != CATEGORICAL]  # one column each, copied as is
_DIRECT_DST = _OFFSETS[_DIRECT]
_NUM = [i for i, f in enumerate(FEATURES) if f.kind == NUMERIC]
_TOTAL = FEATURE_NAMES.index("total_charges")
_TENURE = FEATURE_NAMES.index("tenure")
_NUM_MAX = np.array([NUMERIC_MAX[FEATURES[i].name] for i in _NUM], dtype=np.float64)
_OPTIONAL = [(i, f.name) for i, f in enumerate(FEATURES) if f.kind != CATEGORICAL]  # proto3 `optional` fields
# Per categorical: enum number -> destination column, -1 for UNSPECIFIED/unknown; the last slot catches every
# out-of-range number (negatives wrap to huge as uint64, then np.minimum clips them onto it).
_SENTINEL = max(max(f.enum_numbers) for f in FEATURES if f.kind == CATEGORICAL) + 1
_ENUM_LUT = np.full((len(_CAT), _SENTINEL + 1), -1, dtype=np.intp)
for _k, _i in enumerate(_CAT):
    for _pos, _num in enumerate(FEATURES[_i].enum_numbers):
        _ENUM_LUT[_k, _num] = _OFFSETS[_i] + _pos
_CAT_RANGE = np.arange(len(_CAT))
_CAT_IDX, _NUM_IDX, _DIRECT_IDX = (np.array(x, dtype=np.intp) for x in (_CAT, _NUM, _DIRECT))  # fancy-index fast
_ROWS = np.arange(4096)[:, None]
_GETTER = operator.attrgetter(*FEATURE_NAMES)


def _scatter(values: np.ndarray, cat_cols: np.ndarray) -> np.ndarray:
    """values: (n, n_features) float64 (categoricals ignored, blank TotalCharges already filled);
    cat_cols: (n, n_cat) destination column of each categorical's one."""
    n = values.shape[0]
    out = np.zeros((n, N_ENCODED), dtype=np.float32)
    out[_ROWS[:n] if n <= len(_ROWS) else np.arange(n)[:, None], cat_cols] = 1.0
    out[:, _DIRECT_DST] = values[:, _DIRECT_IDX]
    return out


def _label_fn(label: str | Callable[[int], str]) -> Callable[[int], str]:
    return label if callable(label) else (lambda i: f"{label}[{i}]")


def _raise(cells: list[tuple[int, int, str]], where: Callable[[int, int], str]) -> None:
    """Raise one InvalidInput for all bad cells (row, feature, reason), in row then field order."""
    if cells:
        violations = [(where(r, i), reason) for r, i, reason in sorted(cells)[:MAX_VIOLATIONS]]
        raise InvalidInput(*violations[0], violations=violations)


def _check_numeric(values: np.ndarray, missing: np.ndarray, cells: list[tuple[int, int, str]]) -> None:
    """Finite numerics within [0, NUMERIC_MAX]; tenure a whole number. Appends (row, feature, reason) per bad
    cell."""
    for i, top in zip(_NUM, _NUM_MAX):
        col = values[:, i]
        bad = ~missing[:, i] & ~((col >= 0) & (col <= top))
        if i == _TENURE:
            bad |= ~missing[:, i] & np.isfinite(col) & (col != np.floor(col))
        for r in np.flatnonzero(bad)[:MAX_VIOLATIONS]:
            v = float(col[r])
            reason = ("must be finite" if not math.isfinite(v) else
                      "must not be negative" if v < 0 else f"must be at most {top:g}" if v > top else
                      "must be a whole number")
            cells.append((int(r), i, f"{reason}, got {v!r}"))


def encode_customers(customers: Sequence[common_pb2.Customer],
                     label: str | Callable[[int], str] = "customers") -> np.ndarray:
    """Encode Customer messages to a (n, N_ENCODED) float32 matrix, validating every row.

    Bad fields raise InvalidInput naming them as `<label>[i].<field>` (label a str prefix) or `<label(i)>.<field>`
    (label a function: single Predict passes `lambda i: "customer"`); all violations are collected. A field is bad
    when an enum is UNSPECIFIED/unknown, a boolean/tenure/monthly_charges is absent, or a number is NaN, infinite,
    negative or above its `NUMERIC_MAX`. An absent total_charges follows `fill_blank_total_charges`.
    """
    rows, missing_cells = [], []
    for r, c in enumerate(customers):
        v = _GETTER(c)  # one C-level call for all 19 values
        rows.append(v)
        for i, name in _OPTIONAL:
            if not v[i] and not c.HasField(name):  # presence only matters for falsy values: one call per zero
                missing_cells.append((r, i))
    n = len(rows)
    values = np.array(rows, dtype=np.float64).reshape(n, len(FEATURES))
    enums = np.minimum(values[:, _CAT_IDX].astype(np.int64).view(np.uint64), _SENTINEL)
    cat_cols = _ENUM_LUT[_CAT_RANGE, enums]
    nums = values[:, _NUM_IDX]
    required = [(r, i) for r, i in missing_cells if i != _TOTAL]
    if required or (n and cat_cols.min() < 0) or not ((nums >= 0) & (nums <= _NUM_MAX)).all():
        row_label = _label_fn(label)
        cells: list[tuple[int, int, str]] = [(r, i, "is required") for r, i in required]
        for r, k in zip(*np.nonzero(cat_cols < 0)):
            e = int(values[r, _CAT[k]])
            cells.append((int(r), _CAT[k], "is required (UNSPECIFIED)" if e == 0 else f"unknown value {e}"))
        _check_numeric(values, np.zeros(values.shape, dtype=bool), cells)
        _raise(cells, lambda r, i: f"{row_label(r)}.{FEATURE_NAMES[i]}")
    blank = [r for r, i in missing_cells if i == _TOTAL]
    if blank:
        values[blank, _TOTAL] = fill_blank_total_charges(np.full(len(blank), np.nan))
    return _scatter(values, cat_cols)


def encode_frame(df: pd.DataFrame, line_of: Callable[[int], str] | None = None) -> np.ndarray:
    """Encode a DataFrame with the Telco CSV columns and spellings (extra columns ignored) exactly like
    `encode_customers`. Booleans/categoricals are matched as strings (so SeniorCitizen 0/1 ints work), a blank or
    NaN TotalCharges is the blank rule. Bad cells raise InvalidInput named `row <i>: <Column>` (or `line_of(i)`)."""
    n = len(df)
    where = (lambda r, i: f"{line_of(r)}: {FEATURE_COLUMNS[i]}") if line_of else \
        (lambda r, i: f"row {r}: {FEATURE_COLUMNS[i]}")
    absent = [c for c in FEATURE_COLUMNS if c not in df.columns]
    if absent:
        raise InvalidInput("columns", f"missing columns: {', '.join(absent)}")
    values = np.zeros((n, len(FEATURES)), dtype=np.float64)
    missing = np.zeros((n, len(FEATURES)), dtype=bool)
    unreadable = np.zeros((n, len(FEATURES)), dtype=bool)  # reported once, as "not a number"
    cat_cols = np.zeros((n, len(_CAT)), dtype=np.intp)
    cells: list[tuple[int, int, str]] = []
    for i, f in enumerate(FEATURES):
        col = df[f.column]
        if f.kind == NUMERIC:
            text = col.astype(str).str.strip() if col.dtype == object else None
            blank = (text == "").to_numpy() if text is not None else np.zeros(n, dtype=bool)
            nums = pd.to_numeric(text.where(~blank, "nan") if text is not None else col, errors="coerce")
            nums = nums.to_numpy(dtype=np.float64)
            unparsed = np.isnan(nums) & ~blank & ~col.isna().to_numpy()
            for r in np.flatnonzero(unparsed)[:MAX_VIOLATIONS]:
                cells.append((int(r), i, f"not a number: {shown(col.iloc[r])}"))
            missing[:, i] = np.isnan(nums) & ~unparsed
            unreadable[:, i] = unparsed
            values[:, i] = nums
            continue
        codes = col.astype(str).str.strip().map({s: k for k, s in enumerate(f.categories)})
        unknown = codes.isna().to_numpy()
        for r in np.flatnonzero(unknown)[:MAX_VIOLATIONS]:
            cells.append((int(r), i, f"unknown value {shown(col.iloc[r])}, expected one of {list(f.categories)}"))
        codes = codes.fillna(0).to_numpy(dtype=np.intp)
        if f.kind == BOOLEAN:
            values[:, i] = codes
        else:
            cat_cols[:, _CAT.index(i)] = _OFFSETS[i] + codes
    _check_numeric(values, missing | unreadable, cells)
    missing[:, _TOTAL] = False  # absent TotalCharges is allowed: NaN stays, the blank rule fills it
    cells += [(int(r), int(i), "is required") for r, i in zip(*np.nonzero(missing))]
    _raise(cells, where)
    values[:, _TOTAL] = fill_blank_total_charges(values[:, _TOTAL])
    return _scatter(values, cat_cols)


def decode_matrix(X: np.ndarray, where: Callable[[int], str]) -> pd.DataFrame:
    """The inverse of the encoders, for callers who send the encoded matrix itself (the Open Inference Protocol's
    `features` tensor): (n, N_ENCODED) floats back to a frame in the Telco CSV spellings, for `encode_frame` to
    validate and the prediction log to keep. A categorical's columns must hold one 1 and zeros, a boolean's column
    0 or 1; numerics are passed on as they are (NaN TotalCharges is the blank). Bad cells raise InvalidInput named
    `<where(row)>: <Column>`."""
    values = np.asarray(X, dtype=np.float64)
    columns: dict[str, object] = {}
    cells: list[tuple[int, int, str]] = []
    for i, f in enumerate(FEATURES):
        block = values[:, _OFFSETS[i]:_OFFSETS[i] + len(f.encoded_names)]
        if f.kind == NUMERIC:
            columns[f.column] = block[:, 0]
            continue
        if f.kind == CATEGORICAL:
            bad = ~(((block == 0) | (block == 1)).all(axis=1) & (block.sum(axis=1) == 1))
            reason = f"columns {_OFFSETS[i]}-{_OFFSETS[i] + len(f.categories) - 1} must hold one 1 and zeros"
            picked = block.argmax(axis=1)
        else:
            bad = ~((block[:, 0] == 0) | (block[:, 0] == 1))
            reason = f"column {_OFFSETS[i]} must be 0 or 1"
            picked = np.where(bad, 0, block[:, 0]).astype(np.intp)
        cells += [(int(r), i, reason) for r in np.flatnonzero(bad)[:MAX_VIOLATIONS]]
        columns[f.column] = np.array(f.categories, dtype=object)[picked]
    _raise(cells, lambda r, i: f"{where(r)}: {FEATURE_COLUMNS[i]}")
    return pd.DataFrame(columns)
