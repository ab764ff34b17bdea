"""The Open Inference Protocol v2 (inference.GRPCInferenceService) on a real in-process inference server: both input
forms, typed and raw contents, answer exactly what PredictBatch answers and log the same outbox rows; metadata and
readiness describe the served version; every bad tensor is INVALID_ARGUMENT naming the input, nothing logged."""
from __future__ import annotations

import struct

import grpc
import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc
import numpy as np
import pytest
from churn.v1 import inference_pb2, monitoring_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common import features as F
from services.common import telco_csv
from tests.inference.conftest import TELCO_CSV, Client, start_app

ROWS = 300
CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
            "BOOL": "bool_contents", "BYTES": "bytes_contents"}
NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_}


@pytest.fixture(scope="module")
def served(settings, keys, tmp_path_factory):
    inference = start_app(settings, keys, tmp_path_factory.mktemp("oip"), "production")
    caller = Client(f"127.0.0.1:{inference.port}", settings, keys)
    yield inference, caller, grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(caller.channel)
    caller.close()
    inference.stop(1)


@pytest.fixture(scope="module")
def customers():
    data = TELCO_CSV.read_bytes()
    return telco_csv.parse_telco_csv(data, len(data) + 1, 100_000).customers()[:ROWS]


def tensor(name: str, datatype: str, values, shape=None, raw: bool = False):
    """An InferInputTensor (+ its raw bytes when `raw`), built by hand from the protocol's layout."""
    values = list(values)
    shape = list(shape or [len(values)])
    message = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if not raw:
        getattr(message.contents, CONTENTS[datatype]).extend(values)
        return message, None
    if datatype == "BYTES":
        return message, b"".join(struct.pack("<I", len(v)) + v for v in values)
    return message, np.asarray(values, dtype=NUMPY[datatype]).astype(np.dtype(NUMPY[datatype]).newbyteorder("<")) \
        .tobytes()


def request(tensors, settings, raw: bool = False, outputs=(), **fields) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=settings.model_name, id="req-1", **fields)
    for built in tensors:
        message.inputs.append(built[0])
        if raw:
            message.raw_input_contents.append(built[1])
    message.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs)
    return message


def column_tensors(customers, raw=False, with_ids=True):
    """One tensor per Telco column in the CSV spellings (SeniorCitizen and tenure INT64, charges FP32)."""
    frame = telco_csv.customers_to_frame(customers)
    built = []
    for column in F.FEATURE_COLUMNS:
        values = frame[column]
        if column in ("SeniorCitizen", "tenure"):
            built.append(tensor(column, "INT64", values.astype(int).tolist(), raw=raw))
        elif column in ("MonthlyCharges", "TotalCharges"):
            built.append(tensor(column, "FP32", values.astype(np.float32).tolist(), raw=raw))
        else:
            built.append(tensor(column, "BYTES", [str(v).encode() for v in values], raw=raw))
    if with_ids:
        built.append(tensor("customerID", "BYTES", [c.customer_id.encode() for c in customers], raw=raw))
    return built


def matrix_tensor(customers, raw=False):
    X = F.encode_customers(customers)
    return [tensor("features", "FP32", X.ravel().tolist(), X.shape, raw=raw),
            tensor("customerID", "BYTES", [c.customer_id.encode() for c in customers], raw=raw)]


def outputs_of(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    got = {}
    for index, output in enumerate(reply.outputs):
        dtype = NUMPY[output.datatype]
        if reply.raw_output_contents:
            got[output.name] = np.frombuffer(reply.raw_output_contents[index], dtype=dtype)
        else:
            got[output.name] = np.asarray(getattr(output.contents, CONTENTS[output.datatype]), dtype=dtype)
        assert list(output.shape) == [len(got[output.name])]
    return got


def logged(inference, after: int) -> tuple[list[str], np.ndarray, list[float]]:
    """The rows committed after outbox seq `after`: customer ids, field values (n, fields) and probabilities."""
    batches = [monitoring_pb2.PredictionColumns.FromString(row.record) for row in inference.outbox.pending(100_000)
               if row.seq > after]
    values = [np.frombuffer(b.feature_values, dtype="<f8").reshape(-1, len(F.FEATURES)) for b in batches]
    return ([cid for b in batches for cid in b.customer_ids], np.vstack(values) if values else np.empty((0, 0)),
            [p for b in batches for p in b.probabilities])


def last_seq(inference) -> int:
    rows = inference.outbox.pending(100_000)
    return rows[-1].seq if rows else 0


@pytest.mark.parametrize("form", ["columns", "features"])
@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_model_infer_answers_and_logs_what_predict_batch_does(served, settings, customers, form, raw):
    inference, caller, oip = served
    expected = caller.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers),
                                        metadata=caller.metadata("service"))
    before = last_seq(inference)
    built = column_tensors(customers, raw) if form == "columns" else matrix_tensor(customers, raw)
    reply = oip.ModelInfer(request(built, settings, raw=raw), metadata=caller.metadata("agent"), timeout=30)
    assert (reply.model_name, reply.model_version, reply.id) == (settings.model_name, expected.model.version, "req-1")
    assert reply.parameters["alias"].string_param == "production"
    assert bool(reply.raw_output_contents) == raw
    got = outputs_of(reply)
    np.testing.assert_allclose(got["probability"], [p.probability for p in expected.predictions], rtol=0, atol=1e-6)
    assert got["churn"].tolist() == [p.churn for p in expected.predictions]
    ids, values, probabilities = logged(inference, before)
    assert ids == [c.customer_id for c in customers]
    np.testing.assert_array_equal(values, F.customer_values(customers)[0])  # what Predict would log
    assert probabilities == pytest.approx([p.probability for p in expected.predictions], abs=1e-12)


def test_requested_outputs_only_and_columns_without_ids(served, settings, customers):
    inference, caller, oip = served
    before = last_seq(inference)
    reply = oip.ModelInfer(request(column_tensors(customers[:3], with_ids=False), settings, outputs=["churn"]),
                           metadata=caller.metadata())
    assert [o.name for o in reply.outputs] == ["churn"] and len(reply.outputs[0].contents.bool_contents) == 3
    assert logged(inference, before)[0] == ["", "", ""]


def test_column_tensors_may_be_n_by_1(served, settings, customers):
    _, caller, oip = served
    built = column_tensors(customers[:4])
    for message, _ in built:
        message.shape[:] = [4, 1]
    assert len(oip.ModelInfer(request(built, settings), metadata=caller.metadata()).outputs) == 2


def test_metadata_and_readiness_describe_the_served_version(served, settings):
    _, caller, oip = served
    md = caller.metadata()
    info = caller.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), metadata=md)
    assert oip.ServerLive(pb.ServerLiveRequest(), metadata=md).live
    assert oip.ServerReady(pb.ServerReadyRequest(), metadata=md).ready
    assert oip.ModelReady(pb.ModelReadyRequest(name=settings.model_name), metadata=md).ready
    assert oip.ModelReady(pb.ModelReadyRequest(name=settings.model_name, version=info.model.version),
                          metadata=md).ready
    server = oip.ServerMetadata(pb.ServerMetadataRequest(), metadata=md)
    assert server.name == "churn-inference" and server.version
    meta = oip.ModelMetadata(pb.ModelMetadataRequest(name=settings.model_name), metadata=md)
    assert (meta.name, list(meta.versions), meta.platform) == (settings.model_name, [info.model.version], info.flavor)
    inputs = {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}
    assert inputs["features"] == ("FP32", [-1, F.N_ENCODED])
    assert inputs["Contract"] == ("BYTES", [-1]) and inputs["tenure"] == ("INT64", [-1])
    assert inputs["MonthlyCharges"] == ("FP32", [-1]) and inputs["customerID"] == ("BYTES", [-1])
    assert set(inputs) == {"features", "customerID", *F.FEATURE_COLUMNS}
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probability", "FP32", [-1]),
                                                                             ("churn", "BOOL", [-1])]


@pytest.mark.parametrize("call", ["ModelReady", "ModelMetadata", "ModelInfer"])
@pytest.mark.parametrize("name,version", [("other-model", ""), (None, "999")])
def test_another_model_or_version_is_not_found(served, settings, call, name, version):
    _, caller, oip = served
    name = settings.model_name if name is None else name
    message = {"ModelReady": pb.ModelReadyRequest(name=name, version=version),
               "ModelMetadata": pb.ModelMetadataRequest(name=name, version=version),
               "ModelInfer": pb.ModelInferRequest(model_name=name, model_version=version)}[call]
    with pytest.raises(grpc.RpcError) as caught:
        getattr(oip, call)(message, metadata=caller.metadata())
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert settings.model_name in caught.value.details()


def test_the_same_credentials_as_inference_service(served, settings, customers):
    _, caller, oip = served
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelInfer(request(column_tensors(customers[:1]), settings),
                       metadata=[("x-api-key", settings.api_key)])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        oip.ServerLive(pb.ServerLiveRequest(), metadata=[("x-api-key", "wrong")])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def _columns_with(customers, column, replacement):
    return [replacement if message.name == column else (message, raw) for message, raw in column_tensors(customers)]


def _bad_cases(customers, settings):
    """name -> (request, the field its error must name)."""
    two = customers[:2]
    X = F.encode_customers(two)
    features = lambda values, shape=X.shape, dt="FP32": [tensor("features", dt, values, shape)]  # noqa: E731
    not_one_hot = X.copy()
    not_one_hot[1, [F.ENCODED_COLUMNS.index(f"contract={c}") for c in F.FEATURE_BY_NAME["contract"].categories]] = 1
    cases = {
        "features: wrong shape": (features(X[:, :40].ravel().tolist(), (2, 40)), "inputs[features].shape"),
        "features: 1-D": (features(X.ravel().tolist(), (82,)), "inputs[features].shape"),
        "features: wrong datatype": (features(X.ravel().astype(int).tolist(), X.shape, "INT64"),
                                     "inputs[features].datatype"),
        "features: shape and contents disagree": (features(X.ravel().tolist()[:-1]), "inputs[features]"),
        "features: two ones in a one-hot": (features(not_one_hot.ravel().tolist()), "inputs[features] row 1: Contract"),
        "features: a negative charge": (features(np.where(np.arange(X.size).reshape(X.shape) ==
                                                          F.ENCODED_COLUMNS.index("monthly_charges"), -5.0, X)
                                                 .ravel().tolist()), "inputs[features] row 0: MonthlyCharges"),
        "features with a column": (features(X.ravel().tolist()) + [tensor("tenure", "INT64", [1, 2])],
                                   "inputs[tenure]"),
        "unknown input name": (column_tensors(two) + [tensor("Churn", "BYTES", [b"No", b"Yes"])], "inputs[Churn]"),
        "a missing column": ([t for t in column_tensors(two) if t[0].name != "Contract"], "inputs[Contract]"),
        "a column of the wrong datatype": (_columns_with(two, "tenure", tensor("tenure", "FP32", [1.5, 2.0])),
                                           "inputs[tenure].datatype"),
        "a text column sent as numbers": (_columns_with(two, "Contract", tensor("Contract", "INT64", [1, 2])),
                                          "inputs[Contract].datatype"),
        "a column of another length": (_columns_with(two, "gender", tensor("gender", "BYTES", [b"Male"])),
                                       "inputs[gender].shape"),
        "a 2-D column": (_columns_with(two, "gender", tensor("gender", "BYTES", [b"Male"] * 4, (2, 2))),
                         "inputs[gender].shape"),
        "an unknown spelling": (_columns_with(two, "Contract", tensor("Contract", "BYTES", [b"Weekly", b"One year"])),
                                "row 0: Contract"),
        "not UTF-8": (_columns_with(two, "gender", tensor("gender", "BYTES", [b"\xff", b"Male"])),
                      "inputs[gender] row 0"),
        "an unknown datatype": (_columns_with(two, "tenure", (pb.ModelInferRequest.InferInputTensor(
            name="tenure", datatype="INT128", shape=[2]), None)), "inputs[tenure].datatype"),
        "contents in the wrong field": (_columns_with(two, "tenure", (pb.ModelInferRequest.InferInputTensor(
            name="tenure", datatype="INT64", shape=[2], contents=pb.InferTensorContents(fp32_contents=[1, 2])),
            None)), "inputs[tenure].contents"),
        "a negative dimension": (_columns_with(two, "tenure", tensor("tenure", "INT64", [1, 2], (-2,))),
                                 "inputs[tenure].shape"),
        "an input given twice": (column_tensors(two) + [tensor("tenure", "INT64", [1, 2])], "inputs[tenure]"),
        "no inputs": ([], "inputs"),
        "zero rows": (features([], (0, F.N_ENCODED)), "inputs[features]"),
        "an unknown output": (features(X.ravel().tolist()), "outputs[label]"),
    }
    built = {name: (request(tensors, settings), field) for name, (tensors, field) in cases.items()}
    built["an unknown output"][0].outputs.add(name="label")
    return built


BAD = ["features: wrong shape", "features: 1-D", "features: wrong datatype", "features: shape and contents disagree",
       "features: two ones in a one-hot", "features: a negative charge", "features with a column",
       "unknown input name", "a missing column", "a column of the wrong datatype", "a text column sent as numbers",
       "a column of another length", "a 2-D column", "an unknown spelling", "not UTF-8", "an unknown datatype",
       "contents in the wrong field", "a negative dimension", "an input given twice", "no inputs", "zero rows",
       "an unknown output"]


@pytest.mark.parametrize("case", BAD)
def test_a_bad_tensor_is_invalid_argument_naming_the_input(served, settings, customers, case):
    inference, caller, oip = served
    message, field = _bad_cases(customers, settings)[case]
    backlog = inference.outbox.backlog()
    with pytest.raises(grpc.RpcError) as caught:
        oip.ModelInfer(message, metadata=caller.metadata())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert caught.value.details().startswith(field), caught.value.details()
    bad = error_details_pb2.BadRequest()
    assert rpc_status.from_call(caught.value).details[0].Unpack(bad)
    assert bad.field_violations[0].field.startswith(field)
    assert inference.outbox.backlog() == backlog, "nothing refused may reach the prediction log"


def test_bad_raw_contents_are_invalid_argument(served, settings, customers):
    _, caller, oip = served
    built = column_tensors(customers[:2], raw=True)
    cases = {
        "one raw entry short": (lambda m: m.raw_input_contents.pop(), "raw_input_contents"),
        "raw and typed at once": (lambda m: m.inputs[0].contents.bytes_contents.append(b"Male"),
                                  "inputs[gender].contents"),
        "FP32 bytes cut short": (lambda m: m.raw_input_contents.__setitem__(
            F.FEATURE_COLUMNS.index("MonthlyCharges"), b"\x00" * 7), "inputs[MonthlyCharges] (raw)"),
        "BYTES element cut short": (lambda m: m.raw_input_contents.__setitem__(0, struct.pack("<I", 50) + b"Male"),
                                    "inputs[gender] (raw)"),
        "BYTES with trailing data": (lambda m: m.raw_input_contents.__setitem__(
            0, m.raw_input_contents[0] + struct.pack("<I", 1) + b"x"), "inputs[gender] (raw)"),
    }
    for what, (change, field) in cases.items():
        message = request(built, settings, raw=True)
        change(message)
        with pytest.raises(grpc.RpcError) as caught:
            oip.ModelInfer(message, metadata=caller.metadata())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, caught.value.details())
        assert caught.value.details().startswith(field), (what, caught.value.details())
