"""The contracts: every proto compiles, every unary RPC has a REST rule, every RPC has an access entry."""
import pathlib

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from churn.v1 import access_pb2, auth_pb2, common_pb2, inference_pb2, monitoring_pb2
from services.common.access import access_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULES = (auth_pb2, inference_pb2, monitoring_pb2)
METHODS = [(service, method) for module in MODULES for service in module.DESCRIPTOR.services_by_name.values()
           for method in service.methods]
TELCO_HEADER = ("customerID,gender,SeniorCitizen,Partner,Dependents,tenure,PhoneService,MultipleLines,"
                "InternetService,OnlineSecurity,OnlineBackup,DeviceProtection,TechSupport,StreamingTV,"
                "StreamingMovies,Contract,PaperlessBilling,PaymentMethod,MonthlyCharges,TotalCharges")


def _snake(column: str) -> str:
    special = {"customerID": "customer_id", "gender": "gender", "tenure": "tenure", "StreamingTV": "streaming_tv"}
    if column in special:
        return special[column]
    out = "".join("_" + c.lower() if c.isupper() else c for c in column)
    return out.lstrip("_")


def test_three_services_with_the_issue_rpcs():
    names = {service.name: {m.name for m in service.methods} for service, _ in METHODS}
    assert names["AuthService"] >= {"Register", "Login", "VerifySession", "ListUsers", "ApproveUser", "GetJwks"}
    assert names["InferenceService"] >= {"Predict", "PredictBatch", "PredictCsv", "StreamPredict", "Explain",
                                         "GetModelInfo", "ReloadModel"}
    assert names["MonitoringService"] >= {"RecordPredictions", "SubmitFeedback", "GetFeedbackData", "GetDriftReport",
                                          "UpdateMetrics", "ListModelVersions", "GetCanaryWeight",
                                          "SetCanaryWeight", "UploadTrainingData"}


@pytest.mark.parametrize("service,method", METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_every_unary_rpc_has_an_http_rule(service, method):
    options = method.GetOptions()
    streaming = method.client_streaming or method.server_streaming
    has_rule = options.HasExtension(annotations_pb2.http)
    if streaming:
        assert not has_rule, "streaming RPCs are gRPC only (the transcoder cannot map them)"
        return
    assert has_rule, f"{service.name}.{method.name} has no google.api.http rule"
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    assert rule.WhichOneof("pattern") in {"get", "post", "put", "patch", "delete"}
    assert getattr(rule, rule.WhichOneof("pattern")).startswith("/")


@pytest.mark.parametrize("service,method", METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_every_rpc_declares_its_access(service, method):
    assert method.GetOptions().HasExtension(access_pb2.access), f"{method.name} has no (churn.v1.access)"
    entry = access_table()[f"/{service.full_name}/{method.name}"]
    assert entry.routing in {"direct", "canary", "alias", "internal"}
    assert entry.rate in {"auth", "predict", "none"}
    assert entry.public or entry.roles, f"{method.name}: neither public nor any role may call it"
    assert not (entry.public and entry.ops_key_only)


def test_customer_has_every_telco_column():
    fields = set(common_pb2.Customer.DESCRIPTOR.fields_by_name)
    expected = {_snake(column) for column in TELCO_HEADER.split(",")}
    assert expected == fields


def test_closed_vocabularies_are_enums_with_unspecified_zero():
    for enum in common_pb2.DESCRIPTOR.enum_types_by_name.values():
        assert enum.values_by_number[0].name.endswith("_UNSPECIFIED"), enum.name


def test_descriptor_set_for_envoy_holds_every_service():
    path = ROOT / "gen" / "churn.pb"
    assert path.exists(), "the build must produce gen/churn.pb for Envoy's transcoder"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    services = {f"{f.package}.{s.name}" for f in descriptor_set.file for s in f.service}
    assert {"churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService"} <= services
    assert any(f.name == "google/api/annotations.proto" for f in descriptor_set.file)


def test_the_reloader_role_may_reload_a_model_and_nothing_else():
    """Monitoring's own credential (role `reloader`) is least privilege: ReloadModel, plus VerifySession so the
    other services' session check can confirm it at auth — never a prediction, a data read or an admin RPC."""
    allowed = {path for path, entry in access_table().items() if "reloader" in entry.roles}
    assert allowed == {"/churn.v1.InferenceService/ReloadModel", "/churn.v1.AuthService/VerifySession"}


def test_the_open_inference_protocol_is_called_like_inference_service():
    """Its methods carry no (access) option (the contract is the standard's): access.proto's external entries give
    every one of them the same callers and key as InferenceService, inference through the canary split."""
    from services.common.access import OPEN_INFERENCE_MODULE

    table = access_table()
    service = OPEN_INFERENCE_MODULE.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    predict = table["/churn.v1.InferenceService/Predict"]
    for method in service.methods:
        entry = table[f"/{service.full_name}/{method.name}"]
        assert (entry.public, entry.roles, entry.ops_key_only) == (False, predict.roles, False), method.name
    infer = table["/inference.GRPCInferenceService/ModelInfer"]
    assert (infer.routing, infer.rate, infer.retryable) == ("canary", "predict", True)
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen" / "churn.pb").read_bytes())
    assert any(f.package == "inference" and f.service[0].name == "GRPCInferenceService" for f in descriptor_set.file)
