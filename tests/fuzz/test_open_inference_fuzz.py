"""Property-based fuzzing of ModelInfer's tensors on a real in-process server. The generic RPC fuzzer rarely names
the served model, so it seldom reaches the tensor code: here every request names it, and the inputs are drawn near
the real ones (the Telco column names and `features`, every datatype and odd ones, shapes that fit the contents or
not, typed or raw contents of random bytes), and valid requests with one tensor changed. The property: INVALID_ARGUMENT, NOT_FOUND or RESOURCE_EXHAUSTED (or an
answer), never INTERNAL or UNKNOWN. `FUZZ_EXAMPLES` × 5 requests (100 in `make test`)."""
from __future__ import annotations

import os

import grpc
import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from services.common import features as F
from services.common import telco_csv
from services.inference.tensors import DATATYPES
from tests.inference.conftest import TELCO_CSV, Client, start_app
from tests.inference.test_open_inference import column_tensors, matrix_tensor

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20")) * 5
NAMES = ["features", "customerID", *F.FEATURE_COLUMNS]
ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def served(settings, keys, tmp_path_factory):
    inference = start_app(settings, keys, tmp_path_factory.mktemp("oip-fuzz"), "production")
    caller = Client(f"127.0.0.1:{inference.port}", settings, keys)
    yield caller, grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(caller.channel)
    caller.close()
    inference.stop(0)


def contents() -> st.SearchStrategy[pb.InferTensorContents]:
    small = st.lists(st.integers(-3, 3), max_size=90)
    return st.builds(
        pb.InferTensorContents,
        bool_contents=st.lists(st.booleans(), max_size=6),
        int_contents=st.lists(st.integers(-2**31, 2**31 - 1), max_size=6) | small,
        int64_contents=st.lists(st.integers(-2**63, 2**63 - 1), max_size=6) | small,
        uint_contents=st.lists(st.integers(0, 2**32 - 1), max_size=6),
        fp32_contents=st.lists(st.floats(width=32) | st.sampled_from([0.0, 1.0]), max_size=90),
        fp64_contents=st.lists(st.floats(), max_size=6),
        bytes_contents=st.lists(st.binary(max_size=8) | st.sampled_from([b"Yes", b"No", b"Female", b"\xff"]),
                                max_size=6),
    )


def tensor() -> st.SearchStrategy[pb.ModelInferRequest.InferInputTensor]:
    shapes = st.lists(st.integers(-2, 2**40) | st.integers(0, 45), max_size=3) | st.sampled_from([[2, 41], [2], [2, 1]])
    return st.builds(pb.ModelInferRequest.InferInputTensor,
                     name=st.sampled_from(NAMES) | st.text(max_size=8), datatype=st.sampled_from([*DATATYPES, "BF16",
                                                                                                  "", "fp32"]),
                     shape=shapes, contents=st.none() | contents())


@st.composite
def requests(draw, model_name: str) -> pb.ModelInferRequest:
    inputs = draw(st.lists(tensor(), max_size=22))
    message = pb.ModelInferRequest(model_name=model_name, inputs=inputs, model_version=draw(st.sampled_from(["", "0"])))
    if draw(st.booleans()):
        for item in message.inputs:
            item.ClearField("contents")
        message.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), min_size=max(0, len(inputs) - 1),
                                                        max_size=len(inputs) + 1)))
    message.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=n)
                           for n in draw(st.lists(st.sampled_from(["probability", "churn", "x"]), max_size=2)))
    return message


def valid_request(model_name: str) -> pb.ModelInferRequest:
    """Two Telco customers by their columns, or as the encoded matrix (typed contents)."""
    data = TELCO_CSV.read_bytes()
    two = telco_csv.parse_telco_csv(data, len(data) + 1, 100_000).customers()[:2]
    return [pb.ModelInferRequest(model_name=model_name, inputs=[t for t, _ in built])
            for built in (column_tensors(two), matrix_tensor(two))]


@st.composite
def mutated(draw, bases: list[pb.ModelInferRequest]) -> pb.ModelInferRequest:
    """A valid request with one tensor changed: its datatype, shape or contents, or one input dropped."""
    message = pb.ModelInferRequest()
    message.CopyFrom(draw(st.sampled_from(bases)))
    target = message.inputs[draw(st.integers(0, len(message.inputs) - 1))]
    change = draw(st.sampled_from(["datatype", "shape", "contents", "drop", "values"]))
    if change == "datatype":
        target.datatype = draw(st.sampled_from(list(DATATYPES)))
    elif change == "shape":
        target.shape[:] = draw(st.lists(st.integers(0, 82), max_size=3))
    elif change == "contents":
        target.contents.CopyFrom(draw(contents()))
    elif change == "drop":
        del message.inputs[list(message.inputs).index(target)]
    elif target.contents.fp32_contents:
        index = draw(st.integers(0, len(target.contents.fp32_contents) - 1))
        target.contents.fp32_contents[index] = draw(st.floats(width=32) | st.sampled_from([0.0, 1.0, 2.0, -1.0]))
    elif target.contents.bytes_contents:
        target.contents.bytes_contents[0] = draw(st.binary(max_size=8) | st.sampled_from([b"Yes", b"", b"\xff"]))
    elif target.contents.int64_contents:
        target.contents.int64_contents[0] = draw(st.integers(-2**63, 2**63 - 1) | st.integers(-2, 80))
    return message


def test_no_generated_tensor_gets_internal(served, settings):
    caller, oip = served
    sent = []
    bases = valid_request(settings.model_name)

    @hsettings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(requests(settings.model_name) | mutated(bases))
    def call(message):
        sent.append(message)
        try:
            oip.ModelInfer(message, metadata=caller.metadata(), timeout=30)
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, f"{error.code().name} {error.details()[:300]} for {str(message)[:500]}"

    call()
    assert len(sent) >= EXAMPLES // 2
