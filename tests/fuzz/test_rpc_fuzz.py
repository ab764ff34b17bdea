"""Property-based fuzzing of every unary RPC on real in-process servers (issue 13): messages generated from the
descriptors (any field set or not; extreme numbers, NaN/±Inf, unknown enum numbers, long and odd strings, random
bytes and mutated Telco CSVs, out-of-range timestamps), sent with a role the access table allows. The property: a
caller never gets INTERNAL or UNKNOWN. `FUZZ_EXAMPLES` per RPC (default 20 in `make test`; `make fuzz` sets 800:
>= 10,000 requests in all, the RPCs without free-form fields having only a handful of distinct requests)."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil

import grpc
import grpc_predict_v2_pb2_grpc
import pytest
from churn.v1 import auth_pb2, auth_pb2_grpc, inference_pb2_grpc, monitoring_pb2_grpc
from google.protobuf import descriptor as D
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from services.common.access import access_table
from tests.auth.conftest import auth_settings, start_auth
from tests.inference.conftest import start_app
from tests.monitoring.conftest import start_monitoring

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
TELCO = (pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv").read_bytes().split(b"\n")[:6]
SLOW = {"ReloadModel", "UpdateMetrics", "GetDriftReport", "RotateKeys"}  # seconds each: a tenth of the examples
INT_RANGES = {D.FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), D.FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
              D.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), D.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1)}


def odd_text() -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=40), st.sampled_from(["", "²", "٣", "a\x00b", "Month-to-month", "1", "staging",
                                                             "production", "../../etc", "x" * 5000]))


def csv_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, or the Telco header and rows with cells replaced by odd values."""
    def mutate(rows: list[int], value: str) -> bytes:
        lines = [line.split(b",") for line in TELCO]
        for r in rows:
            cells = lines[1 + r % 5]
            cells[(r * 7) % len(cells)] = value.encode("utf-8", "surrogatepass")
        return b"\n".join(b",".join(cells) for cells in lines)
    odd = st.sampled_from(["", "1e39", "nan", "-inf", "2147483648", "Yes", "W" * 3000, '"', "\x00", "1e-320"])
    return st.one_of(st.binary(max_size=300), st.builds(mutate, st.lists(st.integers(0, 50), max_size=4), odd))


def field_values(field: D.FieldDescriptor, depth: int) -> st.SearchStrategy:
    t = field.type
    if t == D.FieldDescriptor.TYPE_MESSAGE:
        return message_of(field.message_type, depth + 1)
    if t == D.FieldDescriptor.TYPE_STRING:
        return odd_text()
    if t == D.FieldDescriptor.TYPE_BYTES:
        return csv_bytes()
    if t == D.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == D.FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 25)
    if t in (D.FieldDescriptor.TYPE_DOUBLE, D.FieldDescriptor.TYPE_FLOAT):
        return st.one_of(st.floats(width=64 if t == D.FieldDescriptor.TYPE_DOUBLE else 32),
                         st.sampled_from([0.0, -1.0, 1e39, 1e300, 2.0**31]))
    low, high = INT_RANGES.get(t, (-2**31, 2**31 - 1))
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, 72, 1201]))


def message_of(descriptor: D.Descriptor, depth: int = 0) -> st.SearchStrategy:
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    fields = [f for f in descriptor.fields if f.message_type is None or not f.message_type.GetOptions().map_entry]

    def build(chosen: dict) -> object:
        message = cls()
        for name, value in chosen.items():
            field = descriptor.fields_by_name[name]
            if field.is_repeated:
                target = getattr(message, name)
                for item in value:
                    target.add().CopyFrom(item) if field.message_type else target.append(item)
            elif field.message_type:
                getattr(message, name).CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    optional = {f.name: (st.lists(field_values(f, depth), max_size=4) if f.is_repeated
                         else field_values(f, depth)) for f in fields}
    return st.fixed_dictionaries({}, optional=optional).map(build)


@pytest.fixture(scope="module")
def servers(settings, keys, tmp_path_factory):
    """auth, inference (production) and monitoring in-process, each with its own store, over a copy of the
    session's registry: a generated Retrain, Promote or Rollback can succeed, and must move nobody else's aliases."""
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "var").mkdir()
    shutil.copy(settings.data_dir / "mlflow.db", tmp / "var" / "mlflow.db")
    settings = dataclasses.replace(settings, data_dir=tmp / "var",
                                   mlflow_tracking_uri=f"sqlite:///{tmp / 'var' / 'mlflow.db'}")
    auth_app, auth_host, _ = start_auth(auth_settings(tmp / "auth", f"sqlite:///{tmp / 'auth' / 'users.db'}"))
    inference = start_app(settings, keys, tmp, "production")
    monitoring = start_monitoring(settings, keys, tmp / "monitoring")
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}", options=settings.grpc_options())
                for name, port in (("auth", auth_host.port), ("inference", inference.port),
                                   ("monitoring", monitoring.app.port))}
    stubs = {"churn.v1.AuthService": auth_pb2_grpc.AuthServiceStub(channels["auth"]),
             "churn.v1.InferenceService": inference_pb2_grpc.InferenceServiceStub(channels["inference"]),
             "inference.GRPCInferenceService": grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channels["inference"]),
             "churn.v1.MonitoringService": monitoring_pb2_grpc.MonitoringServiceStub(channels["monitoring"])}
    admin = auth_app.accounts
    admin.create_admin("fuzzer", "Fuzz-Admin-Password-1")
    auth_token = admin.login("fuzzer", "Fuzz-Admin-Password-1")[0].token
    yield stubs, {"auth": (auth_app.settings, auth_token), "other": (settings, keys)}
    for channel in channels.values():
        channel.close()
    inference.stop(0)
    monitoring.client.close()
    monitoring.app.stop(0)
    auth_host.stop(0)
    auth_app.close()


def metadata(entry, tokens) -> list[tuple[str, str]]:
    service_settings, credential = tokens["auth"] if entry.service == "churn.v1.AuthService" else tokens["other"]
    role = "service" if "service" in entry.roles else "admin"
    token = credential if isinstance(credential, str) else credential.mint(subject=f"fuzz-{role}", role=role)
    key = service_settings.ops_api_key if entry.ops_key_only else service_settings.api_key
    md = [("x-api-key", key)]
    if not entry.public or entry.service == "churn.v1.AuthService":
        md.append(("authorization", f"Bearer {token}"))
    return md


UNARY = sorted(path for path, entry in access_table().items()
               if not (entry.client_streaming or entry.server_streaming))


@pytest.mark.parametrize("path", UNARY)
def test_no_generated_request_gets_internal(servers, path):
    stubs, tokens = servers
    entry = access_table()[path]
    method = getattr(stubs[entry.service], entry.method)
    request_type = auth_pb2.DESCRIPTOR.pool.FindMethodByName(f"{entry.service}.{entry.method}").input_type
    examples = max(2, EXAMPLES // 10) if entry.method in SLOW else EXAMPLES
    calls = []

    @hsettings(max_examples=examples, deadline=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(message_of(request_type))
    def call(request):
        calls.append(request)
        try:
            method(request, metadata=metadata(entry, tokens), timeout=60)
        except grpc.RpcError as error:
            assert error.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), \
                f"{path}: {error.code().name} {error.details()[:300]} for {str(request)[:500]}"

    call()
    small = all(f.type in (D.FieldDescriptor.TYPE_BOOL, D.FieldDescriptor.TYPE_ENUM) for f in request_type.fields)
    assert small or len(calls) >= examples, f"only {len(calls)} requests generated"  # few fields: few requests
