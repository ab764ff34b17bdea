"""The shared feature module: schema vs the generated protos, parity with an independent pandas one-hot on the real
Telco data, and the validation every request goes through."""
from __future__ import annotations

import math
import pathlib

import numpy as np
import pandas as pd
import pytest
from churn.v1 import common_pb2

from services.common import features as F
from services.common.errors import InvalidInput
from services.common.telco_csv import customers_to_frame, frame_to_customers, parse_telco_csv

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv"
ENUMS_IN_CUSTOMER = {fd.enum_type.full_name: fd.enum_type for fd in common_pb2.Customer.DESCRIPTOR.fields
                     if fd.enum_type is not None}


def good_customer(**overrides) -> common_pb2.Customer:
    fields = dict(customer_id="c-1", gender=common_pb2.GENDER_MALE, senior_citizen=False, partner=True,
                  dependents=False, tenure=12, phone_service=True, multiple_lines=common_pb2.MULTIPLE_LINES_NO,
                  internet_service=common_pb2.INTERNET_SERVICE_FIBER_OPTIC,
                  online_security=common_pb2.INTERNET_ADDON_NO, online_backup=common_pb2.INTERNET_ADDON_YES,
                  device_protection=common_pb2.INTERNET_ADDON_NO, tech_support=common_pb2.INTERNET_ADDON_NO,
                  streaming_tv=common_pb2.INTERNET_ADDON_YES, streaming_movies=common_pb2.INTERNET_ADDON_NO,
                  contract=common_pb2.CONTRACT_MONTH_TO_MONTH, paperless_billing=True,
                  payment_method=common_pb2.PAYMENT_METHOD_ELECTRONIC_CHECK, monthly_charges=70.5,
                  total_charges=846.0)
    fields.update(overrides)
    return common_pb2.Customer(**{k: v for k, v in fields.items() if v is not None})


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return pd.read_csv(DATA, dtype=str, keep_default_na=False)


def reference_encoding(raw: pd.DataFrame) -> np.ndarray:
    """Written independently of the module: explicit vocabularies, pandas one-hot, blank TotalCharges -> 0."""
    vocab = {
        "gender": ["Female", "Male"],
        "MultipleLines": ["No", "Yes", "No phone service"],
        "InternetService": ["DSL", "Fiber optic", "No"],
        **{c: ["No", "Yes", "No internet service"] for c in
           ("OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport", "StreamingTV", "StreamingMovies")},
        "Contract": ["Month-to-month", "One year", "Two year"],
        "PaymentMethod": ["Electronic check", "Mailed check", "Bank transfer (automatic)", "Credit card (automatic)"],
    }
    parts = []
    for column in ["gender", "SeniorCitizen", "Partner", "Dependents", "tenure", "PhoneService", "MultipleLines",
                   "InternetService", "OnlineSecurity", "OnlineBackup", "DeviceProtection", "TechSupport",
                   "StreamingTV", "StreamingMovies", "Contract", "PaperlessBilling", "PaymentMethod",
                   "MonthlyCharges", "TotalCharges"]:
        if column in vocab:
            cat = pd.Categorical(raw[column], categories=vocab[column])
            assert not pd.isna(cat).any(), column
            parts.append(pd.get_dummies(cat).to_numpy(dtype=np.float32))
        elif column == "SeniorCitizen":
            parts.append(raw[column].astype(int).to_numpy(np.float32)[:, None])
        elif column in ("Partner", "Dependents", "PhoneService", "PaperlessBilling"):
            parts.append((raw[column] == "Yes").to_numpy(np.float32)[:, None])
        elif column == "TotalCharges":
            parts.append(pd.to_numeric(raw[column].str.strip().replace("", "0")).to_numpy(np.float32)[:, None])
        else:
            parts.append(pd.to_numeric(raw[column]).to_numpy(np.float32)[:, None])
    return np.hstack(parts)


def test_every_enum_value_has_a_spelling_and_every_spelling_an_enum_value():
    values = {v.name for enum in ENUMS_IN_CUSTOMER.values() for v in enum.values if v.number != 0}
    assert values == set(F.ENUM_SPELLING)
    all_values = {v.name for enum in common_pb2.DESCRIPTOR.enum_types_by_name.values() for v in enum.values}
    assert set(F.ENUM_SPELLING) <= all_values


def test_schema_follows_the_customer_message():
    proto_fields = [fd.name for fd in common_pb2.Customer.DESCRIPTOR.fields if fd.name != "customer_id"]
    assert list(F.FEATURE_NAMES) == proto_fields
    assert F.FEATURE_BY_NAME["contract"].categories == ("Month-to-month", "One year", "Two year")
    assert F.FEATURE_BY_NAME["senior_citizen"].column == "SeniorCitizen"
    assert F.FEATURE_BY_NAME["tenure"].kind == F.NUMERIC
    assert "contract=Month-to-month" in F.ENCODED_COLUMNS and len(F.ENCODED_COLUMNS) == F.N_ENCODED == 41
    assert [F.FEATURE_NAMES[i] for i in F.ENCODED_FEATURE_INDEX][:3] == ["gender", "gender", "senior_citizen"]


def test_parity_with_independent_one_hot_on_the_real_data(raw):
    expected = reference_encoding(raw)
    assert expected.shape == (7043, F.N_ENCODED)
    from_frame = F.encode_frame(raw)
    assert from_frame.dtype == np.float32
    np.testing.assert_array_equal(from_frame, expected)
    parsed = parse_telco_csv(DATA.read_bytes(), 1 << 30, 100_000)
    np.testing.assert_array_equal(F.encode_frame(parsed.frame), expected)
    customers = frame_to_customers(parsed.frame, parsed.customer_ids)
    np.testing.assert_array_equal(F.encode_customers(customers), expected)
    # one at a time (the single-Predict path) gives the same rows
    for r in (0, 488, 7042):
        np.testing.assert_array_equal(F.encode_customers([customers[r]], label=lambda i: "customer"),
                                      expected[r:r + 1])


def test_round_trip_proto_frame_proto(raw):
    parsed = parse_telco_csv(DATA.read_bytes(), 1 << 30, 100_000)
    customers = frame_to_customers(parsed.frame, parsed.customer_ids)
    assert customers[0].customer_id == "7590-VHVEG" and not customers[488].HasField("total_charges")
    frame = customers_to_frame(customers)
    assert frame_to_customers(frame) == customers
    assert frame["customerID"].tolist() == raw["customerID"].tolist()


def test_blank_total_charges_rule():
    np.testing.assert_array_equal(F.fill_blank_total_charges(np.array([np.nan, 5.0])), [0.0, 5.0])
    x = F.encode_customers([good_customer(tenure=0, total_charges=None)])
    assert x[0, F.ENCODED_COLUMNS.index("total_charges")] == 0.0


def test_empty_batch_encodes_to_no_rows():
    assert F.encode_customers([]).shape == (0, F.N_ENCODED)


@pytest.mark.parametrize("overrides, field, reason", [
    ({"contract": 0}, "customers[0].contract", "UNSPECIFIED"),
    ({"payment_method": 99}, "customers[0].payment_method", "unknown value 99"),
    ({"gender": -1}, "customers[0].gender", "unknown value -1"),
    ({"partner": None}, "customers[0].partner", "required"),
    ({"tenure": None}, "customers[0].tenure", "required"),
    ({"monthly_charges": None}, "customers[0].monthly_charges", "required"),
    ({"tenure": -1}, "customers[0].tenure", "negative"),
    ({"monthly_charges": math.nan}, "customers[0].monthly_charges", "finite"),
    ({"total_charges": math.inf}, "customers[0].total_charges", "finite"),
    ({"total_charges": -3.0}, "customers[0].total_charges", "negative"),
])
def test_bad_customer_names_the_field(overrides, field, reason):
    with pytest.raises(InvalidInput) as err:
        F.encode_customers([good_customer(**overrides)])
    assert err.value.field == field and reason in err.value.reason


def test_all_violations_collected_in_row_order_with_caller_label():
    batch = [good_customer(), good_customer(contract=0, tenure=None), good_customer(), good_customer(gender=7)]
    with pytest.raises(InvalidInput) as err:
        F.encode_customers(batch)
    assert [f for f, _ in err.value.violations] == ["customers[1].tenure", "customers[1].contract",
                                                    "customers[3].gender"]
    with pytest.raises(InvalidInput) as err:
        F.encode_customers([good_customer(monthly_charges=-1.0)], label=lambda i: "customer")
    assert err.value.field == "customer.monthly_charges"


def test_false_and_zero_are_present_values():
    x = F.encode_customers([good_customer(senior_citizen=False, tenure=0, monthly_charges=0.0, total_charges=0.0)])
    assert x[0, F.ENCODED_COLUMNS.index("senior_citizen")] == 0.0 and x[0, F.ENCODED_COLUMNS.index("tenure")] == 0


def test_encode_frame_rejects_unknown_spelling_with_row_and_column(raw):
    bad = raw.head(3).copy()
    bad.loc[2, "Contract"] = "Monthly"
    with pytest.raises(InvalidInput) as err:
        F.encode_frame(bad)
    assert err.value.field == "row 2: Contract" and "Monthly" in err.value.reason


def test_feature_spec_is_json_and_matches_encoding():
    import json

    spec = json.loads(json.dumps(F.feature_spec()))
    assert spec["encoded_columns"] == list(F.ENCODED_COLUMNS)
    assert [f["column"] for f in spec["features"]] == list(F.FEATURE_COLUMNS)


def test_decode_matrix_inverts_the_encoding_on_the_real_data(raw):
    """The Open Inference Protocol's `features` tensor: the independent one-hot of every Telco row decodes to the
    CSV spellings, which encode back to the very same matrix."""
    X = reference_encoding(raw)
    decoded = F.decode_matrix(X, lambda r: f"row {r}")
    assert list(decoded.columns) == list(F.FEATURE_COLUMNS)
    assert decoded["Contract"].tolist() == raw["Contract"].str.strip().tolist()
    np.testing.assert_array_equal(F.encode_frame(decoded), X)


def test_decode_matrix_names_a_broken_one_hot_and_a_non_binary_flag():
    X = F.encode_customers([good_customer(), good_customer()])
    X[1, F.ENCODED_COLUMNS.index("contract=Two year")] = 1.0  # two ones
    X[0, F.ENCODED_COLUMNS.index("partner")] = 0.5
    with pytest.raises(InvalidInput) as caught:
        F.decode_matrix(X, lambda r: f"features row {r}")
    fields = [field for field, _ in caught.value.violations]
    assert fields == ["features row 0: Partner", "features row 1: Contract"]
    assert "one 1 and zeros" in caught.value.violations[1][1]
