"""Every caller mistake through a real server gets INVALID_ARGUMENT (BadRequest naming the field or CSV line) or
RESOURCE_EXHAUSTED (naming what is too big and the limit) — never INTERNAL."""
from __future__ import annotations

import math

import grpc
import pandas as pd
import pytest
from churn.v1 import common_pb2, inference_pb2
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import telco_csv
from services.inference.predictor import Limits
from tests.inference.conftest import TELCO_CSV, Client, start_app

LIMITS = Limits(max_batch_rows=100, max_csv_bytes=200_000, max_csv_rows=50)
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module")
def client(settings, keys, tmp_path_factory):
    inference = start_app(settings, keys, tmp_path_factory.mktemp("bad"), "production", limits=LIMITS)
    caller = Client(f"127.0.0.1:{inference.port}", settings, keys)
    yield caller
    caller.close()
    inference.stop(1)


GOOD = telco_csv.frame_to_customers(pd.read_csv(TELCO_CSV, nrows=3).assign(TotalCharges=lambda f: f.TotalCharges
                                                                           .astype(float)))[0]
HEADER = TELCO_CSV.read_bytes().split(b"\n", 1)[0].rstrip(b"\r")
ROWS = [line.rstrip(b"\r") for line in TELCO_CSV.read_bytes().split(b"\n")[1:4]]


def customer(**changes) -> common_pb2.Customer:
    c = common_pb2.Customer()
    c.CopyFrom(GOOD)
    for name, value in changes.items():
        if value is None:
            c.ClearField(name)
        else:
            setattr(c, name, value)
    return c


def predict(**changes):
    return "Predict", inference_pb2.PredictRequest(customer=customer(**changes))


def csv(body: bytes):
    return "PredictCsv", inference_pb2.PredictCsvRequest(csv=httpbody_pb2.HttpBody(content_type="text/csv", data=body))


def csv_rows(*rows: bytes, header: bytes = HEADER) -> bytes:
    return b"\n".join([header, *rows]) + b"\n"


def replace_cell(row: bytes, column: str, value: bytes) -> bytes:
    cells = row.rstrip(b"\r").split(b",")
    cells[HEADER.decode().split(",").index(column)] = value
    return b",".join(cells)


CASES = {
    "no customer": ("Predict", inference_pb2.PredictRequest(), INVALID, "customer"),
    "wrong enum number": (*predict(contract=99), INVALID, "customer.contract"),
    "unspecified enum": (*predict(gender=common_pb2.GENDER_UNSPECIFIED), INVALID, "customer.gender"),
    "missing tenure": (*predict(tenure=None), INVALID, "customer.tenure"),
    "missing boolean": (*predict(partner=None), INVALID, "customer.partner"),
    "missing monthly charges": (*predict(monthly_charges=None), INVALID, "customer.monthly_charges"),
    "NaN charges": (*predict(monthly_charges=math.nan), INVALID, "customer.monthly_charges"),
    "inf total charges": (*predict(total_charges=math.inf), INVALID, "customer.total_charges"),
    "negative tenure": (*predict(tenure=-3), INVALID, "customer.tenure"),
    "negative charges": (*predict(monthly_charges=-1.0), INVALID, "customer.monthly_charges"),
    "bad row in batch": ("PredictBatch", inference_pb2.PredictBatchRequest(
        customers=[GOOD, GOOD, customer(payment_method=42)]), INVALID, "customers[2].payment_method"),
    "empty batch": ("PredictBatch", inference_pb2.PredictBatchRequest(), INVALID, "customers"),
    "huge batch": ("PredictBatch", inference_pb2.PredictBatchRequest(customers=[GOOD] * 101), EXHAUSTED, "100"),
    "empty explain": ("Explain", inference_pb2.ExplainRequest(), INVALID, "customers"),
    "huge explain": ("Explain", inference_pb2.ExplainRequest(customers=[GOOD] * 101), EXHAUSTED, "customers"),
    "bad enum in explain": ("Explain", inference_pb2.ExplainRequest(customers=[customer(internet_service=7)]),
                            INVALID, "customers[0].internet_service"),
    "empty CSV": (*csv(b""), INVALID, "csv line 1"),
    "header only CSV": (*csv(HEADER + b"\n"), INVALID, "csv"),
    "wrong columns": (*csv(csv_rows(header=HEADER.replace(b"Contract", b"Contrakt"))), INVALID, "csv line 1"),
    "row with too many fields": (*csv(csv_rows(ROWS[0], ROWS[1] + b",extra")), INVALID, "csv line 3"),
    "unknown category on a line": (*csv(csv_rows(replace_cell(ROWS[0], "Contract", b"Weekly"))), INVALID,
                                   "csv line 2: Contract"),
    "non-numeric tenure": (*csv(csv_rows(ROWS[0], ROWS[1], replace_cell(ROWS[2], "tenure", b"ten"))), INVALID,
                           "csv line 4: tenure"),
    "negative CSV charges": (*csv(csv_rows(replace_cell(ROWS[0], "MonthlyCharges", b"-5"))), INVALID,
                             "csv line 2: MonthlyCharges"),
    "bad Churn label": (*csv(csv_rows(replace_cell(ROWS[0], "Churn", b"Maybe"))), INVALID, "csv line 2: Churn"),
    "unterminated quote": (*csv(csv_rows(ROWS[0], b'"7590-VHVEG,Female' + b"\n" + ROWS[1])), INVALID, "csv line"),
    "non-UTF-8 CSV": (*csv(csv_rows(ROWS[0], ROWS[1].replace(b"Female", b"F\xe9male").replace(b"Male", b"M\xe9le"))),
                      INVALID, "csv line 3"),
    "oversize CSV": (*csv(TELCO_CSV.read_bytes()), EXHAUSTED, "200000"),
    "too many CSV rows": (*csv(b"\n".join(TELCO_CSV.read_bytes().split(b"\n")[:60]) + b"\n"), EXHAUSTED, "50 rows"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_never_internal(client, name):
    method, request, code, named = CASES[name]
    with pytest.raises(grpc.RpcError) as caught:
        getattr(client.stub, method)(request, metadata=client.metadata("admin"))
    error = caught.value
    assert error.code() == code, f"{name}: {error.code()} {error.details()}"
    assert named in error.details(), f"{name}: {error.details()!r} does not name {named!r}"
    if code == INVALID:
        status = rpc_status.from_call(error)
        details = error_details_pb2.BadRequest()
        assert status is not None and status.details[0].Unpack(details)
        assert any(named in v.field or named in f"{v.field}: {v.description}" for v in details.field_violations)


def test_non_utf8_string_field_is_invalid_argument(client):
    """A customer_id whose bytes are not UTF-8 cannot even be parsed: still INVALID_ARGUMENT, not INTERNAL."""
    good = inference_pb2.PredictRequest(customer=customer(customer_id="AAAA")).SerializeToString()
    raw = good.replace(b"AAAA", b"\xff\xfe\xfd\xfc")
    call = client.channel.unary_unary("/churn.v1.InferenceService/Predict", request_serializer=lambda b: b,
                                      response_deserializer=inference_pb2.PredictResponse.FromString)
    with pytest.raises(grpc.RpcError) as caught:
        call(raw, metadata=client.metadata())
    assert caught.value.code() == INVALID, caught.value.details()
    assert caught.value.details() == "request: cannot be parsed as churn.v1.PredictRequest: String field had bad UTF-8"


def test_at_the_limits_still_works(client):
    reply = client.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=[GOOD] * 100),
                                     metadata=client.metadata())
    assert len(reply.predictions) == 100
    reply = client.stub.PredictCsv(csv(b"\n".join(TELCO_CSV.read_bytes().split(b"\n")[:51]) + b"\n")[1],
                                   metadata=client.metadata())
    assert len(reply.predictions) == 50
