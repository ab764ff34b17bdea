"""The Open Inference Protocol v2 through the real Envoy, called with tritonclient from its own virtualenv (as a
KServe/Triton user would): ModelInfer on the encoded features and on the named Telco columns gives Predict's
probabilities; health and metadata answer; bad tensors are INVALID_ARGUMENT naming the input; the gateway asks the
same key and token as InferenceService. Also: our contract is wire-identical to the one tritonclient ships."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import uuid

import grpc_predict_v2_pb2 as pb
import grpc_predict_v2_pb2_grpc
import numpy as np
import pytest
from churn.v1 import inference_pb2
from google.protobuf import descriptor_pb2

from services.common import features as F
from services.common import telco_csv
from tests.harness import ROOT

CLIENT_PYTHON = ROOT / "var" / "oip-client" / "bin" / "python"
CALLS = ROOT / "tests" / "e2e" / "tritonclient_calls.py"
N = 40


def _client_python() -> str:
    if not CLIENT_PYTHON.exists():
        pytest.fail("tritonclient's virtualenv is missing: `make oip-client` (run by `make test`) makes var/oip-client")
    return str(CLIENT_PYTHON)


def tritonclient(suite, calls: list[dict], token: str | None, key: str = "client") -> list[dict]:
    headers = dict(suite.md(token, key=key))
    job = {"url": suite.gateway.address, "headers": headers, "model": suite.settings.model_name, "calls": calls}
    done = subprocess.run([_client_python(), str(CALLS)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def column_inputs(customers) -> list[dict]:
    frame = telco_csv.customers_to_frame(customers)
    inputs = []
    for column in F.FEATURE_COLUMNS:
        if column in ("SeniorCitizen", "tenure"):
            inputs.append({"name": column, "datatype": "INT64", "shape": [len(frame)],
                           "data": frame[column].astype(int).tolist()})
        elif column in ("MonthlyCharges", "TotalCharges"):
            inputs.append({"name": column, "datatype": "FP32", "shape": [len(frame)],
                           "data": frame[column].astype(float).tolist()})
        else:
            inputs.append({"name": column, "datatype": "BYTES", "shape": [len(frame)],
                           "data": frame[column].astype(str).tolist()})
    return inputs + [{"name": "customerID", "datatype": "BYTES", "shape": [len(frame)],
                      "data": [c.customer_id for c in customers]}]


def features_input(customers) -> dict:
    X = F.encode_customers(customers)
    return {"name": "features", "datatype": "FP32", "shape": list(X.shape), "data": X.tolist()}


@pytest.fixture(scope="module")
def predicted(suite, customers):
    """Predict, one call per customer, as the reference."""
    _, inference, _ = suite.stubs()
    replies = [inference.Predict(inference_pb2.PredictRequest(customer=c), metadata=suite.md(suite.service_token),
                                 timeout=10).prediction for c in customers[:N]]
    assert {p.model.alias for p in replies} == {"production"}  # the suite's canary weight is 0
    return replies


def test_model_infer_with_tritonclient_equals_predict(suite, customers, predicted):
    token = suite.approved_agent("oip")[2]
    calls = [{"call": "live"}, {"call": "ready"}, {"call": "model_ready"}, {"call": "server_metadata"},
             {"call": "model_metadata"},
             {"call": "infer", "id": "by-columns", "inputs": column_inputs(customers[:N])},
             {"call": "infer", "id": "by-features", "inputs": [features_input(customers[:N])],
              "outputs": ["probability"]}]
    live, ready, model_ready, server, metadata, by_columns, by_features = tritonclient(suite, calls, token)
    assert live == ready == model_ready == {"ok": True}
    assert server["ok"]["name"] == "churn-inference"
    version = predicted[0].model.version
    meta = metadata["ok"]
    assert (meta["name"], meta["versions"]) == (suite.settings.model_name, [version])
    assert {"name": "features", "datatype": "FP32", "shape": ["-1", str(F.N_ENCODED)]} in meta["inputs"]
    assert [o["name"] for o in meta["outputs"]] == ["probability", "churn"]
    expected = [p.probability for p in predicted]
    for answer, request_id in ((by_columns, "by-columns"), (by_features, "by-features")):
        result = answer["ok"]
        assert (result["model_version"], result["id"]) == (version, request_id)
        np.testing.assert_allclose(result["outputs"]["probability"], expected, rtol=0, atol=1e-6)
    assert by_columns["ok"]["outputs"]["churn"] == [p.churn for p in predicted]
    assert set(by_features["ok"]["outputs"]) == {"probability"}


def test_typed_contents_through_the_gateway(suite, customers, predicted):
    """tritonclient always sends raw_input_contents: the typed form, through Envoy with the generated stub."""
    X = F.encode_customers(customers[:N])
    tensor = pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=list(X.shape),
                                                   contents=pb.InferTensorContents(fp32_contents=X.ravel().tolist()))
    stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(suite.channel())
    reply = stub.ModelInfer(pb.ModelInferRequest(model_name=suite.settings.model_name, inputs=[tensor]),
                            metadata=suite.md(suite.service_token), timeout=10)
    probability = next(o for o in reply.outputs if o.name == "probability").contents.fp32_contents
    np.testing.assert_allclose(probability, [p.probability for p in predicted], rtol=0, atol=1e-6)


def test_inference_reaches_monitoring_and_the_ops_pin_reaches_staging(suite, customers, predicted):
    """A ModelInfer prediction is logged like Predict's (the outbox shipped to monitoring: the customer as sent, the
    same probability); the ops pin header sends ModelInfer to staging, which says so."""
    from churn.v1 import monitoring_pb2

    customer = type(customers[0])()
    customer.CopyFrom(customers[0])
    customer.customer_id = f"oip-{uuid.uuid4().hex[:12]}"
    X = F.encode_customers([customer])
    inputs = [pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=list(X.shape),
                                                    contents=pb.InferTensorContents(fp32_contents=X.ravel().tolist())),
              pb.ModelInferRequest.InferInputTensor(name="customerID", datatype="BYTES", shape=[1],
                                                    contents=pb.InferTensorContents(
                                                        bytes_contents=[customer.customer_id.encode()]))]
    stub = grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(suite.channel())
    infer = pb.ModelInferRequest(model_name=suite.settings.model_name, inputs=inputs)
    reply = stub.ModelInfer(infer, metadata=suite.md(suite.service_token), timeout=10)
    assert reply.parameters["alias"].string_param == "production"
    _, _, monitoring = suite.stubs()
    query = monitoring_pb2.ListPredictionsRequest(customer_id=customer.customer_id)
    deadline, logged = time.monotonic() + 60, []
    while not logged and time.monotonic() < deadline:
        logged = monitoring.ListPredictions(query, metadata=suite.md(suite.service_token, key="ops"),
                                            timeout=10).predictions
        time.sleep(0.2)
    assert len(logged) == 1, "the ModelInfer prediction never reached monitoring"
    assert logged[0].record.customer == customer
    assert logged[0].record.probability == pytest.approx(predicted[0].probability, abs=1e-6)
    assert logged[0].record.model.alias == "production"
    pinned = stub.ModelInfer(infer, metadata=suite.md(suite.service_token, key="ops", x_churn_alias="staging"),
                             timeout=10)
    assert pinned.parameters["alias"].string_param == "staging"


def test_bad_tensors_are_invalid_argument_naming_the_input(suite, customers):
    good = features_input(customers[:3])
    wrong_shape = dict(good, shape=[3 * F.N_ENCODED], data=np.ravel(good["data"]).tolist())
    wrong_datatype = dict(good, datatype="FP64")
    wrong_datatype_column = [dict(i, datatype="FP32", data=[1.5] * 3) if i["name"] == "tenure" else i
                             for i in column_inputs(customers[:3])]
    unknown = column_inputs(customers[:3]) + [{"name": "Churn", "datatype": "BYTES", "shape": [3],
                                               "data": ["No"] * 3}]
    cases = [([wrong_shape], "inputs[features].shape"), ([dict(wrong_datatype, datatype="INT32",
                                                              data=np.zeros((3, F.N_ENCODED), int).tolist())],
                                                         "inputs[features].datatype"),
             (wrong_datatype_column, "inputs[tenure].datatype"), (unknown, "inputs[Churn]")]
    answers = tritonclient(suite, [{"call": "infer", "inputs": inputs} for inputs, _ in cases], suite.service_token)
    for answer, (_, field) in zip(answers, cases):
        assert answer.get("error", {}).get("status") == "StatusCode.INVALID_ARGUMENT", answer
        assert answer["error"]["message"].startswith(field), answer
    # an FP64 matrix is accepted (any float) and scores like FP32
    assert "ok" in tritonclient(suite, [{"call": "infer", "inputs": [wrong_datatype]}], suite.service_token)[0]


def test_the_gateway_asks_the_same_key_and_token(suite, customers):
    calls = [{"call": "live"}, {"call": "infer", "inputs": [features_input(customers[:1])]}]
    for answer in tritonclient(suite, calls, token=None):
        assert answer["error"]["status"] == "StatusCode.UNAUTHENTICATED", answer
    for answer in tritonclient(suite, calls, token=suite.service_token, key="not-a-key"):
        assert answer["error"]["status"] == "StatusCode.UNAUTHENTICATED", answer


def test_health_and_reflection_through_the_gateway_name_the_protocol(suite):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = suite.channel()
    status = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), metadata=suite.md(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=suite.md(), timeout=5)
    listed = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "inference.GRPCInferenceService" in listed


def test_our_contract_is_the_one_tritonclient_speaks():
    """Every service method, message and field of protos/grpc_predict_v2.proto exists in tritonclient's contract
    with the same number, type and label (Triton's is a superset): the wire formats agree."""
    dumped = subprocess.run([_client_python(), "-c", "import sys; from tritonclient.grpc import service_pb2; "
                             "sys.stdout.buffer.write(service_pb2.DESCRIPTOR.serialized_pb)"],
                            capture_output=True, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    theirs = descriptor_pb2.FileDescriptorProto.FromString(dumped.stdout)
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    assert ours.package == theirs.package == "inference"

    def messages(file):
        def walk(prefix, items):
            for message in items:
                yield f"{prefix}.{message.name}", message
                yield from walk(f"{prefix}.{message.name}", message.nested_type)
        return dict(walk(f".{file.package}", file.message_type))

    their_messages = messages(theirs)
    checked = 0
    for name, message in messages(ours).items():
        assert name in their_messages, name
        their_fields = {f.number: f for f in their_messages[name].field}
        for field in message.field:
            theirs_ = their_fields.get(field.number)
            assert theirs_ is not None, f"{name}.{field.name}"
            assert (field.name, field.type, field.label, field.type_name) == \
                   (theirs_.name, theirs_.type, theirs_.label, theirs_.type_name), f"{name}.{field.name}"
            checked += 1
        assert [o.name for o in message.oneof_decl] == [o.name for o in their_messages[name].oneof_decl][
            :len(message.oneof_decl)], name
    their_methods = {m.name: m for m in theirs.service[0].method}
    for method in ours.service[0].method:
        assert (method.input_type, method.output_type) == (their_methods[method.name].input_type,
                                                           their_methods[method.name].output_type), method.name
    assert ours.service[0].name == theirs.service[0].name == "GRPCInferenceService"
    assert checked >= 40


def test_the_readme_example_runs_against_the_suite(suite, customers, production_reference, tmp_path):
    """README's "Open Inference Protocol" block as written: only the gateway address and secrets folder change."""
    section = (ROOT / "README.md").read_text().split("\n## Open Inference Protocol\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one bash block"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "api_key").write_text(suite.settings.api_key)
    (secrets / "admin_password").write_text(suite.admin_password)
    script = blocks[0].replace("localhost:8080", suite.gateway.address).replace("secrets/", f"{secrets}/")
    _client_python()
    path = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=ROOT, env=dict(os.environ, PATH=path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    decoder, text, replies = json.JSONDecoder(), done.stdout, []
    position = 0
    while len(replies) < 2:
        start = text.index("{", position)
        reply, position = decoder.raw_decode(text, start)
        replies.append(reply)
    metadata, inferred = replies
    expected = float(production_reference.probability(customers[:1])[0])
    assert metadata["name"] == suite.settings.model_name == "churn-model"
    assert metadata["versions"] == [production_reference.version]
    probability = next(o for o in inferred["outputs"] if o["name"] == "probability")["contents"]["fp32_contents"][0]
    assert probability == pytest.approx(expected, abs=1e-6)
    live, printed = text[position:].strip().splitlines()[-1].split(" ", 1)
    assert live == "True" and float(printed.strip("[]")) == pytest.approx(expected, abs=1e-6)
