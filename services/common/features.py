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
_BOOL = [i for i, f in enumerate(FEATURES) if f.kind == BOOLEAN]
_TOTAL = FEATURE_NAMES.index("total_charges")
_TENURE = FEATURE_NAMES.index("tenure")
_TOTAL_DST = _OFFSETS[_TOTAL]
_NUM_MAX = np.array([NUMERIC_MAX[FEATURES[i].name] for i in _NUM], dtype=np.float64)
_NUM_TOTAL, _NUM_TENURE = _NUM.index(_TOTAL), _NUM.index(_TENURE)
_OPTIONAL = [(i, f.name) for i, f in enumerate(FEATURES) if f.kind != CATEGORICAL]  # proto3 `optional` fields
# Per categorical: enum number -> destination column, -1 for UNSPECIFIED/unknown; the last slot catches every
# number out of range (and every value that is no whole number).
_SENTINEL = max(max(f.enum_numbers) for f in FEATURES if f.kind == CATEGORICAL) + 1
_ENUM_LUT = np.full((len(_CAT), _SENTINEL + 1), -1, dtype=np.intp)
for _k, _i in enumerate(_CAT):
    for _pos, _num in enumerate(FEATURES[_i].enum_numbers):
        _ENUM_LUT[_k, _num] = _OFFSETS[_i] + _pos
_CAT_RANGE = np.arange(len(_CAT))
_CAT_IDX, _NUM_IDX, _DIRECT_IDX, _BOOL_IDX = (np.array(x, dtype=np.intp) for x in (_CAT, _NUM, _DIRECT, _BOOL))
# The usual case in one pass: every boolean/number within its bounds, booleans and tenure whole.
_LOW = np.zeros(len(_DIRECT))
_HIGH = np.array([1.0 if FEATURES[i].kind == BOOLEAN else NUMERIC_MAX[FEATURES[i].name] for i in _DIRECT])
_WHOLE = _BOOL + [_TENURE]  # fields that must be whole numbers
_WHOLE_IDX = np.array(_WHOLE, dtype=np.intp)
_ROWS = np.arange(4096)[:, None]
_GETTER = operator.attrgetter(*FEATURE_NAMES)
# A few rows are encoded in plain Python (`_encode_few`): numpy's cost per call, not per row, dominates them.
FEW_ROWS = 8
_ZERO_ROW = [0.0] * N_ENCODED
_FEW_CATEGORICAL = tuple((i, {num: int(_ENUM_LUT[k, num]) for num in FEATURES[i].enum_numbers})
                         for k, i in enumerate(_CAT))
_FEW_DIRECT = tuple((i, int(_OFFSETS[i]), float(high), i in _WHOLE) for i, high in zip(_DIRECT, _HIGH))


def _cat_cols(values: np.ndarray) -> np.ndarray:
    """(n, n_cat) destination column of each categorical's one; -1 where the value is no known enum number."""
    cats = values[:, _CAT_IDX]
    with np.errstate(invalid="ignore"):  # NaN and infinities cast to garbage here, caught by `whole` below
        numbers = cats.astype(np.int64)
    cat_cols = _ENUM_LUT[_CAT_RANGE, np.minimum(numbers.view(np.uint64), _SENTINEL)]  # negatives wrap to huge
    whole = numbers == cats
    if not whole.all():  # NaN, infinite or fractional: no enum number
        cat_cols[~whole] = -1
    return cat_cols


def _scatter(values: np.ndarray, cat_cols: np.ndarray) -> np.ndarray:
    """values: (n, n_features) field values (categoricals ignored, a blank TotalCharges NaN); cat_cols: (n, n_cat)
    destination column of each categorical's one."""
    n = values.shape[0]
    out = np.zeros((n, N_ENCODED), dtype=np.float32)
    out[_ROWS[:n] if n <= len(_ROWS) else np.arange(n)[:, None], cat_cols] = 1.0
    out[:, _DIRECT_DST] = values[:, _DIRECT_IDX]
    out[:, _TOTAL_DST] = fill_blank_total_charges(values[:, _TOTAL])
    return out


def _label_fn(label: str | Callable[[int], str]) -> Callable[[int], str]:
    return label if callable(label) else (lambda i: f"{label}[{i}]")


def _raise(cells: list[tuple[int, int, str]], where: Callable[[int, int], str]) -> None:
    """Raise one InvalidInput for all bad cells (row, feature, reason), in row then field order."""
    if cells:
        violations = [(where(r, i), reason) for r, i, reason in sorted(cells)[:MAX_VIOLATIONS]]
        raise InvalidInput(*violations[0], violations=violations)


def _number(v: float) -> object:
    return int(v) if math.isfinite(v) and v == int(v) else v


def _numeric_reason(v: float, top: float, whole: bool) -> str:
    return ("must be finite" if not math.isfinite(v) else "must not be negative" if v < 0 else
            f"must be at most {top:g}" if v > top else "must be a whole number" if whole else "")


def bad_cells(values: np.ndarray, skip: np.ndarray | None = None, absent: np.ndarray | None = None,
              cat_cols: np.ndarray | None = None) -> list[tuple[int, int, str]]:
    """THE input rules, on field values (see `customer_values`): (row, feature index, reason) of every cell that
    breaks them, [] when all hold. An enum must be a known number (0 = UNSPECIFIED), a boolean 0 or 1, a number
    finite within [0, NUMERIC_MAX] (tenure whole); only total_charges may be absent. NaN is absent unless `absent`
    (a mask) says which NaN were absent and which were sent; `skip` marks cells already reported (unparsable text);
    `cat_cols`: `_cat_cols(values)` when the caller has it."""
    cat_cols = _cat_cols(values) if cat_cols is None else cat_cols
    direct, whole = values[:, _DIRECT_IDX], values[:, _WHOLE_IDX]
    if (cat_cols.min(initial=0) >= 0 and ((direct >= _LOW) & (direct <= _HIGH)).all()
            and (whole == np.floor(whole)).all()):
        return []  # NaN fails the bounds: an absent field takes the full check below
    bools = values[:, _BOOL_IDX]
    nums = values[:, _NUM_IDX]
    num_ok = (nums >= 0) & (nums <= _NUM_MAX)
    num_ok[:, _NUM_TOTAL] |= np.isnan(nums[:, _NUM_TOTAL]) if absent is None else absent[:, _TOTAL]
    num_ok[:, _NUM_TENURE] &= nums[:, _NUM_TENURE] == np.floor(nums[:, _NUM_TENURE])
    bad = np.zeros(values.shape, dtype=bool)
    bad[:, _CAT_IDX] = cat_cols < 0
    bad[:, _BOOL_IDX] = (bools != 0) & (bools != 1)
    bad[:, _NUM_IDX] = ~num_ok
    if skip is not None:
        bad &= ~skip
    if not bad.any():
        return []
    cells = []
    for r, i in zip(*np.nonzero(bad)):
        v, f = float(values[r, i]), FEATURES[i]
        if math.isnan(v) and (absent is None or absent[r, i]):
            reason = "is required"
        elif f.kind == CATEGORICAL:
            reason = "is required (UNSPECIFIED)" if v == 0 else f"unknown value {_number(v)}"
        elif f.kind == BOOLEAN:
            reason = f"must be 0 or 1 (false or true), got {_number(v)}"
        else:
            reason = f"{_numeric_reason(v, NUMERIC_MAX[f.name], i == _TENURE)}, got {v!r}"
        cells.append((int(r), int(i), reason))
        if len(cells) >= MAX_VIOLATIONS:
            break
    return cells


def customer_values(customers: Sequence[common_pb2.Customer]) -> tuple[np.ndarray, np.ndarray]:
    """The Customer messages' fields as numbers, (n, len(FEATURES)) float64 in FEATURES order: an enum's number, a
    boolean 0/1, a number as sent; NaN where an optional field is absent (what the encoder reads and the prediction
    log keeps), with the mask of absent fields (a NaN sent as a value is not absent). Not checked: `bad_cells`."""
    rows, missing_rows, missing_cols = [], [], []
    for r, c in enumerate(customers):
        v = _GETTER(c)  # one C-level call for all 19 values
        rows.append(v)
        for i, name in _OPTIONAL:
            if not v[i] and not c.HasField(name):  # presence only matters for falsy values: one call per zero
                missing_rows.append(r)
                missing_cols.append(i)
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(FEATURES))
    absent = np.zeros(values.shape, dtype=bool)
    if missing_rows:
        absent[missing_rows, missing_cols] = True
        values[absent] = np.nan
    return values, absent


def encode_values(values: np.ndarray, label: str | Callable[[int], str] = "customers",
                  absent: np.ndarray | None = None) -> np.ndarray:
    """Check field values (`customer_values`) by `bad_cells` and encode them to the (n, N_ENCODED) float32 matrix.
    Bad fields raise InvalidInput naming them as `<label>[i].<field>` (label a str prefix) or `<label(i)>.<field>`
    (label a function: single Predict passes `lambda i: "customer"`); all violations are collected."""
    if 0 < len(values) <= FEW_ROWS:
        encoded = _encode_few(values)
        if encoded is not None:
            return encoded
    return _encode_checked(values, label, absent)


def _encode_few(values: np.ndarray) -> np.ndarray | None:
    """`_encode_checked` of a few rows in plain Python, bit for bit, when every field passes `bad_cells`' quick
    test (enums known, booleans and numbers present within bounds, booleans and tenure whole); None otherwise (an
    absent total_charges or a bad field), for `_encode_checked` to encode it or name the bad fields."""
    rows = []
    for row in values.tolist():
        out = _ZERO_ROW.copy()
        for i, columns in _FEW_CATEGORICAL:
            column = columns.get(row[i])  # a float key finds its whole enum number; NaN, 0 and fractions do not
            if column is None:
                return None
            out[column] = 1.0
        for i, column, high, whole in _FEW_DIRECT:
            v = row[i]
            if not 0.0 <= v <= high or (whole and v != math.floor(v)):  # NaN fails the bounds
                return None
            out[column] = v
        rows.append(out)
    return np.array(rows, dtype=np.float32)


def _encode_checked(values: np.ndarray, label: str | Callable[[int], str] = "customers",
                    absent: np.ndarray | None = None) -> np.ndarray:
    """`encode_values` with numpy at any size: the general path."""
    row_label = _label_fn(label)
    cat_cols = _cat_cols(values)
    _raise(bad_cells(values, absent=absent, cat_cols=cat_cols), lambda r, i: f"{row_label(r)}.{FEATURE_NAMES[i]}")
    return _scatter(values, cat_cols)


def encode_customers(customers: Sequence[common_pb2.Customer],
                     label: str | Callable[[int], str] = "customers") -> np.ndarray:
    """Encode Customer messages to a (n, N_ENCODED) float32 matrix, validating every row (`encode_values`). A field
    is bad when an enum is UNSPECIFIED/unknown, a boolean/tenure/monthly_charges is absent, or a number is NaN,
    infinite, negative or above its `NUMERIC_MAX`. An absent total_charges follows `fill_blank_total_charges`."""
    values, absent = customer_values(customers)
    return encode_values(values, label, absent)


def frame_values(df: pd.DataFrame, line_of: Callable[[int], str] | None = None) -> np.ndarray:
    """A DataFrame with the Telco CSV columns and spellings (extra columns ignored) as checked field values (see
    `customer_values`). Booleans/categoricals are matched as strings (so SeniorCitizen 0/1 ints work), a blank or NaN
    TotalCharges is absent. Bad cells raise InvalidInput named `row <i>: <Column>` (or `line_of(i)`)."""
    n = len(df)
    where = (lambda r, i: f"{line_of(r)}: {FEATURE_COLUMNS[i]}") if line_of else \
        (lambda r, i: f"row {r}: {FEATURE_COLUMNS[i]}")
    absent = [c for c in FEATURE_COLUMNS if c not in df.columns]
    if absent:
        raise InvalidInput("columns", f"missing columns: {', '.join(absent)}")
    values = np.zeros((n, len(FEATURES)), dtype=np.float64)
    unreadable = np.zeros((n, len(FEATURES)), dtype=bool)  # reported once, as text
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
            unreadable[:, i] = unparsed
            values[:, i] = nums
            continue
        codes = col.astype(str).str.strip().map({s: k for k, s in enumerate(f.categories)})
        unknown = codes.isna().to_numpy()
        for r in np.flatnonzero(unknown)[:MAX_VIOLATIONS]:
            cells.append((int(r), i, f"unknown value {shown(col.iloc[r])}, expected one of {list(f.categories)}"))
        unreadable[:, i] = unknown
        codes = codes.fillna(0).to_numpy(dtype=np.intp)
        values[:, i] = codes if f.kind == BOOLEAN else np.asarray(f.enum_numbers, dtype=np.float64)[codes]
    _raise(cells + bad_cells(values, skip=unreadable), where)
    return values


def encode_frame(df: pd.DataFrame, line_of: Callable[[int], str] | None = None) -> np.ndarray:
    """`frame_values` encoded exactly like `encode_customers`."""
    values = frame_values(df, line_of)
    return _scatter(values, _cat_cols(values))


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
