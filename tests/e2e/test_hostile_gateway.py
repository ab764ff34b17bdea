"""Issue 13 items 1, 5 and 10 through a real Envoy: requests the transcoder cannot map are answered by the gateway
(404/405/400 JSON), never forwarded raw to a gRPC server; caller mistakes never count as upstream failures, so a
hundred malformed requests eject nothing; a client's x-request-id does not choose prediction ids."""
from __future__ import annotations

import json
import urllib.request

import grpc
import pytest
from churn.v1 import inference_pb2
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

UNMAPPABLE = [  # (verb, path, body, content-type)
    ("DELETE", "/v1/predict", None, None),
    ("GET", "/v1/predict", None, None),
    ("PUT", "/v1/canary", b'{"percent": 5}', "application/json"),
    ("GET", "/.well-known/jwks.json?x=1", None, None),
    ("GET", "/v1/canary?nonsense=1&more=2", None, None),
    ("POST", "/churn.v1.InferenceService/Predict", b'{"customer": {}}', "application/json"),
    ("POST", "/churn.v1.AuthService/Login", b"not json at all", "text/plain"),
    ("GET", "/v1/models/versions/extra/segments", None, None),
]


def admin_stats(suite, prefix: str) -> dict[str, int]:
    url = f"http://127.0.0.1:{suite.settings.envoy_admin_port}/stats?format=json&filter={prefix}"
    with urllib.request.urlopen(url, timeout=5) as response:
        stats = json.loads(response.read())["stats"]
    return {s["name"]: s.get("value", 0) for s in stats if "name" in s}


# The services' own calls to each other, which go on in the background whatever a test sends: the outbox shipper's
# RecordPredictions (it lingers OUTBOX_LINGER_MS before sending) and the session checks' VerifySession.
BACKGROUND_METHODS = {"RecordPredictions", "VerifySession"}


def caller_rpcs(suite, service: str) -> float:
    """The RPCs a service answered for callers (one scrape of its churn_grpc_requests_total), background calls out."""
    url = f"http://127.0.0.1:{suite.services[service].http_port}/metrics"
    text = urllib.request.urlopen(url, timeout=3).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "churn_grpc_requests_total" and sample.labels.get("method") not in BACKGROUND_METHODS)


def ejections(suite) -> int:
    return sum(v for k, v in admin_stats(suite, "outlier_detection.ejections_enforced_total").items())


@pytest.mark.parametrize("verb, path, body, content_type", UNMAPPABLE)
def test_requests_the_transcoder_cannot_map_are_answered_by_the_gateway(suite, verb, path, body, content_type):
    token = suite.admin_token()
    before = {name: caller_rpcs(suite, name) for name in ("auth", "production", "monitoring")}
    reply = suite.rest(verb, path, body, token=token, key="ops",
                       headers={"content-type": content_type} if content_type else None)
    assert reply.status in (400, 404, 405), (reply.status, reply.body[:300])
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    reply.json()
    assert {name: caller_rpcs(suite, name) for name in before} == before, "the request reached a service"


def test_a_hundred_malformed_requests_eject_no_upstream(suite, customers):
    token = suite.admin_token()
    before = ejections(suite)
    for i in range(100):
        verb, path, body, content_type = UNMAPPABLE[i % len(UNMAPPABLE)]
        suite.rest(verb, path, body, token=token, key="ops" if i % 2 else "client",
                   headers={"content-type": content_type} if content_type else None)
    _, inference, _ = suite.stubs()
    for i in range(20):  # mistakes the services answer themselves (INVALID_ARGUMENT), and deadlines too short to
        try:               # meet, count for nothing either
            inference.Predict(inference_pb2.PredictRequest(customer=customers[0]) if i % 2 else
                              inference_pb2.PredictRequest(), metadata=suite.md(token),
                              timeout=0.0005 if i % 2 else 10)
        except grpc.RpcError as error:
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED), error
    assert ejections(suite) == before
    assert suite.rest("GET", "/healthz", key=None).status == 200


def test_a_clients_request_id_does_not_choose_prediction_ids(suite, customers):
    token = suite.admin_token()
    _, inference, _ = suite.stubs()
    md = suite.md(token, x_request_id="chosen-by-me")
    first = inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=md, timeout=10)
    again = inference.Predict(inference_pb2.PredictRequest(customer=customers[0]), metadata=md, timeout=10)
    assert first.prediction.prediction_id != again.prediction.prediction_id
    assert not first.prediction.prediction_id.startswith("chosen-by-me")
