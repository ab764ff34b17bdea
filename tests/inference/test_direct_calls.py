"""Issue 13 item 10 at inference: a caller-chosen `x-request-id` became the prediction id, so a repeated id
silently dropped the second prediction from the log. Only the gateway's request ids (calls carrying its stamp) are
used as they are — an Envoy retry still produces the same ids; a direct caller's id gets a server nonce."""
from __future__ import annotations

from churn.v1 import inference_pb2

from services.common.direct_calls import GATEWAY_HEADER
from tests.inference.test_bad_input import GOOD


def test_a_repeated_direct_request_id_logs_both_predictions(servers):
    inference, client = servers["production"]
    request = inference_pb2.PredictBatchRequest(customers=[GOOD, GOOD])
    before = inference.outbox.backlog()
    first = client.stub.PredictBatch(request, metadata=client.metadata(request_id="mine"))
    again = client.stub.PredictBatch(request, metadata=client.metadata(request_id="mine"))
    forged = client.stub.PredictBatch(request, metadata=[*client.metadata(request_id="mine"), (GATEWAY_HEADER, "x")])
    ids = [p.prediction_id for reply in (first, again, forged) for p in reply.predictions]
    assert len(set(ids)) == 6 and all(i.startswith("mine.") for i in ids), ids
    assert inference.outbox.backlog() - before == 6


def test_a_long_direct_request_id_is_cut_to_a_prefix(servers):
    _, client = servers["production"]
    reply = client.stub.Predict(inference_pb2.PredictRequest(customer=GOOD),
                                metadata=client.metadata(request_id="r" * 5000))
    assert reply.prediction.prediction_id.startswith("r" * 40 + ".") and len(reply.prediction.prediction_id) < 70
