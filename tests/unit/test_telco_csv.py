"""Telco CSV parsing: what a caller uploading a file gets back, and how each mistake is named."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from services.common.errors import InvalidInput, ResourceExhausted
from services.common.features import FEATURE_COLUMNS, N_ENCODED
from services.common.telco_csv import customer_to_csv_row, parse_telco_csv

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv"
LINES = DATA.read_text().splitlines()
HEADER, ROW1, ROW2 = LINES[0], LINES[1], LINES[2]
BIG = 1 << 30


def csv_bytes(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def parse(data: bytes, max_bytes: int = BIG, max_rows: int = 100_000):
    return parse_telco_csv(data, max_bytes, max_rows)


def expect_invalid(data: bytes, field: str, *reason_parts: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as err:
        parse(data)
    assert err.value.field == field, err.value
    for part in reason_parts:
        assert part in err.value.reason, err.value
    return err.value


def test_whole_file_parses_with_ids_labels_and_typed_columns():
    parsed = parse(DATA.read_bytes())
    assert len(parsed) == 7043 and parsed.customer_ids[0] == "7590-VHVEG"
    assert int(parsed.churn.sum()) == 1869
    assert parsed.frame["TotalCharges"].isna().sum() == 11
    assert str(parsed.frame["tenure"].dtype) == "int64" and list(parsed.frame.columns) == list(FEATURE_COLUMNS)
    assert parsed.encoded.shape == (7043, N_ENCODED) and parsed.lines[:2] == [2, 3]


def test_customer_id_and_churn_are_optional_and_column_order_is_free():
    columns = HEADER.split(",")
    keep = [i for i, c in enumerate(columns) if c not in ("customerID", "Churn")][::-1]
    pick = lambda line: ",".join(line.split(",")[i] for i in keep)  # noqa: E731
    parsed = parse(csv_bytes(pick(HEADER), pick(ROW1), "", pick(ROW2)))
    assert parsed.customer_ids == ["", ""] and parsed.churn is None and parsed.lines == [2, 4]
    full = parse(csv_bytes(HEADER, ROW1, ROW2))
    np.testing.assert_array_equal(parsed.encoded, full.encoded)


def test_utf8_bom_is_accepted():
    assert len(parse(b"\xef\xbb\xbf" + csv_bytes(HEADER, ROW1))) == 1


def test_customers_and_csv_rows_use_telco_spellings():
    parsed = parse(csv_bytes(HEADER, ROW1))
    row = customer_to_csv_row(parsed.customers()[0])
    assert row == {"customerID": "7590-VHVEG", "gender": "Female", "SeniorCitizen": 0, "Partner": "Yes",
                   "Dependents": "No", "tenure": 1, "PhoneService": "No", "MultipleLines": "No phone service",
                   "InternetService": "DSL", "OnlineSecurity": "No", "OnlineBackup": "Yes",
                   "DeviceProtection": "No", "TechSupport": "No", "StreamingTV": "No", "StreamingMovies": "No",
                   "Contract": "Month-to-month", "PaperlessBilling": "Yes", "PaymentMethod": "Electronic check",
                   "MonthlyCharges": 29.85, "TotalCharges": 29.85}


def test_empty_csv():
    expect_invalid(b"", "csv line 1", "empty")
    expect_invalid(csv_bytes(HEADER), "csv", "no data rows")


def test_oversize_and_too_many_rows():
    with pytest.raises(ResourceExhausted):
        parse(DATA.read_bytes(), max_bytes=1000)
    with pytest.raises(ResourceExhausted):
        parse(csv_bytes(HEADER, ROW1, ROW2), max_rows=1)


def test_non_utf8_names_the_line():
    data = csv_bytes(HEADER, ROW1).replace(b"Female", b"F\xe9male")  # latin-1 é
    expect_invalid(data, "csv line 2", "UTF-8")


def test_missing_and_unknown_columns_are_named():
    header = HEADER.replace("Contract", "Contrakt")
    err = expect_invalid(csv_bytes(header, ROW1), "csv line 1", "missing columns: Contract", "unknown columns: Contrakt")
    assert "Contrakt" in err.message


def test_wrong_field_count_names_the_line():
    expect_invalid(csv_bytes(HEADER, ROW1, ROW2 + ",extra"), "csv line 3", "22 fields", "21")


@pytest.mark.parametrize("column, value, reason", [
    ("Contract", "Monthly", "unknown value 'Monthly'"),
    ("SeniorCitizen", "Yes", "unknown value 'Yes'"),
    ("tenure", "abc", "not a number"),
    ("tenure", "1.5", "whole number"),
    ("tenure", "", "required"),
    ("MonthlyCharges", "-4", "negative"),
    ("MonthlyCharges", "inf", "finite"),
    ("Churn", "Maybe", "unknown value 'Maybe'"),
])
def test_bad_value_names_line_and_column(column, value, reason):
    fields = ROW2.split(",")
    fields[HEADER.split(",").index(column)] = value
    expect_invalid(csv_bytes(HEADER, ROW1, ",".join(fields)), f"csv line 3: {column}", reason)


def test_blank_total_charges_is_allowed():
    fields = ROW2.split(",")
    fields[HEADER.split(",").index("TotalCharges")] = " "
    parsed = parse(csv_bytes(HEADER, ",".join(fields)))
    assert np.isnan(parsed.frame["TotalCharges"][0]) and not parsed.customers()[0].HasField("total_charges")


def test_several_bad_rows_all_reported():
    a, b = ROW1.split(","), ROW2.split(",")
    a[HEADER.split(",").index("gender")] = "X"
    b[HEADER.split(",").index("tenure")] = "-1"
    err = expect_invalid(csv_bytes(HEADER, ",".join(a), ",".join(b)), "csv line 2: gender")
    assert [f for f, _ in err.violations] == ["csv line 2: gender", "csv line 3: tenure"]
