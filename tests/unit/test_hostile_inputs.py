"""Issue 13 items 2, 4 and 6 at the unit level: a 30,000-column CSV header answers at once with a short message,
the input domain bounds hold in both encoders, and no error message or status repeats unbounded caller input."""
from __future__ import annotations

import math
import pathlib
import time

import grpc
import numpy as np
import pandas as pd
import pytest
from google.rpc import error_details_pb2

from services.common import features as F
from services.common import telco_csv
from services.common.errors import InvalidInput, shown
from services.common.interceptor import MAX_DETAILS_BYTES, MAX_STATUS_MESSAGE_CHARS, status_for

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv"
HEADER, ROW = DATA.read_text().splitlines()[:2]


def test_a_30000_column_header_answers_quickly_with_a_bounded_message():
    """The duplicate check used to be quadratic: a 293 KiB header took 16 s of CPU. The bound is generous (the
    linear check takes milliseconds); the message names at most ten columns of each kind."""
    extra = [f"extra_{i}" for i in range(30_000)] + ["tenure"] * 3
    data = (",".join([HEADER, *extra]) + "\n" + ",".join([ROW, *["1"] * len(extra)]) + "\n").encode()
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as err:
        telco_csv.parse_telco_csv(data, None, 10)
    assert time.perf_counter() - started < 2.0
    assert err.value.field == "csv line 1" and len(err.value.message) < 1000
    assert "unknown columns: extra_0" in err.value.reason and "and 29990 more" in err.value.reason
    assert "duplicate columns: tenure" in err.value.reason


CUSTOMERS = telco_csv.frame_to_customers(pd.read_csv(DATA, nrows=2).assign(TotalCharges=lambda f: f.TotalCharges
                                                                           .astype(float)))


@pytest.mark.parametrize("field, value, reason", [
    ("monthly_charges", 1e39, "must be at most"), ("monthly_charges", math.inf, "must be finite"),
    ("monthly_charges", math.nan, "must be finite"), ("total_charges", 1e300, "must be at most"),
    ("tenure", F.MAX_TENURE_MONTHS + 1, "must be at most 1200"), ("tenure", 2**31 - 1, "must be at most"),
])
def test_both_encoders_refuse_values_outside_the_domain(field, value, reason):
    customer = CUSTOMERS[0].__class__()
    customer.CopyFrom(CUSTOMERS[0])
    setattr(customer, field, value)
    with pytest.raises(InvalidInput) as err:
        F.encode_customers([CUSTOMERS[1], customer])
    assert err.value.field == f"customers[1].{field}" and reason in err.value.reason
    frame = telco_csv.customers_to_frame([CUSTOMERS[1], customer])
    with pytest.raises(InvalidInput) as err:
        F.encode_frame(frame)
    frame_reason = "is required" if value != value else reason  # a NaN cell in a frame is a blank
    assert err.value.field == f"row 1: {F.FEATURE_BY_NAME[field].column}" and frame_reason in err.value.reason


def test_the_bounds_themselves_are_accepted_and_stay_finite_in_float32():
    customer = CUSTOMERS[0].__class__()
    customer.CopyFrom(CUSTOMERS[0])
    customer.tenure, customer.monthly_charges = F.MAX_TENURE_MONTHS, F.MAX_MONTHLY_CHARGES
    customer.total_charges = F.MAX_TOTAL_CHARGES
    X = F.encode_customers([customer])
    assert np.isfinite(X).all()
    np.testing.assert_array_equal(F.encode_frame(telco_csv.customers_to_frame([customer])), X)


def test_echoed_values_are_cut():
    assert shown("Weekly") == "'Weekly'" and shown(1e39) == "1e+39"
    long = shown("W" * 30_000)
    assert len(long) < 80 and "30000 characters" in long
    frame = telco_csv.customers_to_frame(CUSTOMERS[:1]).assign(Contract="W" * 30_000, tenure="t" * 30_000)
    with pytest.raises(InvalidInput) as err:
        F.encode_frame(frame)
    assert all(len(reason) < 200 for _, reason in err.value.violations), err.value.violations


def test_a_status_is_bounded_whatever_the_error_says():
    """The backstop: a domain error quoting 30 KB, or 100 violations with long names, still leaves as a status
    that fits gRPC's 8 KiB trailer limit and Envoy's header limits."""
    error = InvalidInput("x" * 30_000, "y" * 30_000,
                         violations=[(f"customers[{i}].{'f' * 500}", "r" * 500) for i in range(100)])
    status = status_for(error)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert len(status.message) <= MAX_STATUS_MESSAGE_CHARS + 1
    details = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(details) and details.field_violations
    assert details.ByteSize() <= MAX_DETAILS_BYTES + 500 and status.ByteSize() < 6000
