"""The few-rows encoder (`features._encode_few`, plain Python) against the general numpy path it stands in for:
the same float32 matrix bit for bit, and the same InvalidInput (fields, reasons, order) for every bad value."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from services.common import features as F
from services.common.errors import InvalidInput
from services.common.telco_csv import parse_telco_csv
from tests.unit.test_features import DATA, good_customer

TOTAL = F.FEATURE_NAMES.index("total_charges")
# Values that break a rule somewhere (or sit on its edge): NaN, infinities, negatives, fractions, beyond a bound.
EDGES = [math.nan, math.inf, -math.inf, -0.0, 0.0, -1.0, 0.5, 1.0, 1.5, 2.0, 99.0, 1200.0, 1200.5, 1201.0,
         F.MAX_MONTHLY_CHARGES, F.MAX_MONTHLY_CHARGES + 0.01, F.MAX_TOTAL_CHARGES, F.MAX_TOTAL_CHARGES * 2, 1e300,
         float(2 ** 64), -float(2 ** 63), 2.0 ** -1074]


def good_value(spec: F.FeatureSpec) -> st.SearchStrategy[float]:
    if spec.kind == F.CATEGORICAL:
        return st.sampled_from([float(n) for n in spec.enum_numbers])
    if spec.kind == F.BOOLEAN:
        return st.sampled_from([0.0, 1.0, -0.0])
    if spec.name == "tenure":
        return st.integers(0, F.MAX_TENURE_MONTHS).map(float)
    return st.floats(0.0, F.NUMERIC_MAX[spec.name])


@st.composite
def field_rows(draw) -> tuple[np.ndarray, np.ndarray]:
    """1..FEW_ROWS+1 rows of valid field values, each with at most two fields spoilt, and an absent mask (a NaN
    total_charges is absent unless drawn as sent)."""
    n = draw(st.integers(1, F.FEW_ROWS + 1))
    values = np.array([[draw(good_value(spec)) for spec in F.FEATURES] for _ in range(n)], dtype=np.float64)
    for _ in range(draw(st.integers(0, 2))):
        r, i = draw(st.integers(0, n - 1)), draw(st.integers(0, len(F.FEATURES) - 1))
        values[r, i] = draw(st.one_of(st.sampled_from(EDGES), st.floats(), st.integers(-3, 8).map(float)))
    absent = np.zeros(values.shape, dtype=bool)
    absent[:, TOTAL] = np.isnan(values[:, TOTAL]) & np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    return values, absent


def outcome(encode, values: np.ndarray, absent: np.ndarray | None):
    try:
        X = encode(values, "customers", absent)
    except InvalidInput as err:
        return ("invalid", err.field, err.reason, err.violations)
    return ("encoded", X.dtype, X.shape, X.view(np.uint32).tobytes())


@hsettings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_rows(), st.booleans())
def test_few_rows_equal_the_general_path(rows, with_mask):
    values, absent = rows
    mask = absent if with_mask else None
    few = F._encode_few(values)
    if few is not None:  # only what the general path accepts, encoded to the very same bits
        assert outcome(lambda *_: few, values, mask) == outcome(F._encode_checked, values, mask)
    assert outcome(F.encode_values, values, mask) == outcome(F._encode_checked, values, mask)


def test_few_rows_take_every_telco_row_but_the_blank_totals():
    """Not vacuous: the fast path takes every real row with a TotalCharges, bit for bit, and leaves the 11 blank
    ones (absent, so NaN) to the general path."""
    values, absent = F.customer_values(parse_telco_csv(DATA.read_bytes(), None, 100_000).customers())
    declined = 0
    for r in range(len(values)):
        few = F._encode_few(values[r:r + 1])
        general = F._encode_checked(values[r:r + 1], "customers", absent[r:r + 1])
        if few is None:
            declined += 1
            assert absent[r, TOTAL]
        else:
            assert few.dtype == general.dtype and few.view(np.uint32).tobytes() == general.view(np.uint32).tobytes()
    assert declined == 11


@pytest.mark.parametrize("overrides", [{"contract": 0}, {"tenure": None}, {"monthly_charges": math.nan},
                                       {"total_charges": None}, {"gender": 7}])
def test_one_customer_errors_and_blanks_match(overrides):
    values, absent = F.customer_values([good_customer(**overrides)])
    label = lambda i: "customer"  # noqa: E731 - single Predict's label
    assert outcome(lambda v, _, a: F.encode_values(v, label, a), values, absent) == \
        outcome(lambda v, _, a: F._encode_checked(v, label, a), values, absent)
