"""gRPC through the real Envoy, fuzzed (issue 13): for every unary RPC the gateway routes, hypothesis-generated
request messages (tests/fuzz/test_rpc_fuzz.py's strategies: any field set or not, extreme numbers, NaN/±Inf,
unknown enum numbers, long and odd strings, mutated Telco CSVs) sent with the generated stubs to the gateway port
with valid credentials (the ops key; the service token where only services may call, else an admin token), so they
pass the edge and reach the services. The property: never INTERNAL or UNKNOWN, and no status the gateway maps to a
5xx. The RPCs that change the shared suite are left out, as in the REST fuzz (tests/e2e/test_rest_fuzz.py).
`FUZZ_EXAMPLES` per RPC (20 in `make test`; 800 in `make fuzz`, >= 10,000 in all)."""
from __future__ import annotations

import os

import grpc
import grpc_predict_v2_pb2_grpc
import pytest
from churn.v1 import auth_pb2
from hypothesis import HealthCheck, given, settings as hsettings

from services.common.access import access_table
from tests.e2e.test_rest_fuzz import SKIPPED
from tests.fuzz.test_rpc_fuzz import SLOW, message_of

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
# Statuses that are never a caller's mistake: the server's bugs, and what the transcoder answers as 500/501/503/504
# (google.rpc.Code's HTTP mapping), i.e. a caller would see a 5xx for a request it got wrong.
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS,
                 grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ROUTED = sorted(path for path, entry in access_table().items()
                if entry.routing != "internal" and entry.method not in SKIPPED
                and not (entry.client_streaming or entry.server_streaming))
SENT: dict[str, int] = {}  # requests sent per RPC, for the run's total


@pytest.fixture(scope="module")
def credentials(suite):
    admin = suite.admin_token()
    return {"admin": suite.md(admin, key="ops"), "service": suite.md(suite.service_token, key="ops")}


@pytest.fixture(scope="module", autouse=True)
def report_total():
    yield
    print(f"\ngRPC fuzz through Envoy: {sum(SENT.values())} requests over {len(SENT)} RPCs")


@pytest.mark.parametrize("path", ROUTED)
def test_no_generated_request_gets_a_server_fault_through_the_gateway(suite, credentials, path):
    entry = access_table()[path]
    auth, inference, monitoring = suite.stubs()
    stub = {"churn.v1.AuthService": auth, "churn.v1.InferenceService": inference,
            "churn.v1.MonitoringService": monitoring,
            "inference.GRPCInferenceService": grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(suite.channel())
            }[entry.service]
    method = getattr(stub, entry.method)
    metadata = credentials["admin" if "admin" in entry.roles or entry.public else "service"]
    request_type = auth_pb2.DESCRIPTOR.pool.FindMethodByName(f"{entry.service}.{entry.method}").input_type
    examples = max(2, EXAMPLES // 10) if entry.method in SLOW else EXAMPLES
    SENT[path] = 0

    @hsettings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(message_of(request_type))
    def call(request):
        SENT[path] += 1
        try:
            method(request, metadata=metadata, timeout=60)
        except grpc.RpcError as error:
            assert error.code() not in SERVER_FAULTS, \
                f"{path}: {error.code().name} {(error.details() or '')[:300]} for {str(request)[:500]}"

    call()
