"""The two gRPC anchors of `make bench`: the smallest Python gRPC server that answers the suite's
`churn.v1.InferenceService/Predict` (same request bytes as the suite gets), either around the same xgboost booster
(decode, encode with the shared feature module, `inplace_predict` on one thread, answer; PredictBatch too, as
the bound of the batch path) or with no model at all
(decode, answer a constant: the ceiling of Python gRPC on this machine).

    python bench/grpc_anchor.py --port-file FILE [--model-json artifacts/model.json]

OK answers are counted in `churn_grpc_requests_total{code="OK"}` on an HTTP side port, like the suite's, so the
bench counts every target's successes the same way. Writes {"grpc": port, "http": port} to --port-file."""
from __future__ import annotations

import argparse
import json
import pathlib
import signal
import sys
import threading
from concurrent import futures

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

import grpc  # noqa: E402
from churn.v1 import inference_pb2  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402
from prometheus_client import Counter, start_http_server  # noqa: E402

from services.common import features as F  # noqa: E402

OK = Counter("churn_grpc_requests_total", "RPCs handled, by final status code.", ["service", "method", "code"])


def scorer(model_json: str | None):
    if not model_json:
        return None
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(model_json)
    booster.set_param({"nthread": 1})
    return booster


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-file", type=pathlib.Path, required=True)
    parser.add_argument("--model-json", default=None)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    booster = scorer(args.model_json)
    counted = OK.labels("anchor", "Predict", "OK")

    def scored(customers) -> list[inference_pb2.Prediction]:
        probabilities = booster.inplace_predict(F.encode_customers(customers)).tolist()
        return [inference_pb2.Prediction(customer_id=c.customer_id, churn=p >= 0.5, probability=p)
                for c, p in zip(customers, probabilities)]

    def predict(request: inference_pb2.PredictRequest, context) -> inference_pb2.PredictResponse:
        if booster is None:
            reply = inference_pb2.PredictResponse()
        else:
            reply = inference_pb2.PredictResponse(prediction=scored([request.customer])[0])
        counted.inc()
        return reply

    def predict_batch(request: inference_pb2.PredictBatchRequest, context) -> inference_pb2.PredictBatchResponse:
        return inference_pb2.PredictBatchResponse(predictions=scored(request.customers))

    methods = {"Predict": grpc.unary_unary_rpc_method_handler(
        predict, request_deserializer=inference_pb2.PredictRequest.FromString,
        response_serializer=inference_pb2.PredictResponse.SerializeToString)}
    if booster is not None:  # the batch bound: what a minimal server spends on the same 1,000 rows
        methods["PredictBatch"] = grpc.unary_unary_rpc_method_handler(
            predict_batch, request_deserializer=inference_pb2.PredictBatchRequest.FromString,
            response_serializer=inference_pb2.PredictBatchResponse.SerializeToString)
    handler = grpc.method_handlers_generic_handler("churn.v1.InferenceService", methods)
    server = grpc.server(futures.ThreadPoolExecutor(args.threads))
    server.add_generic_rpc_handlers((handler,))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    http_server, _ = start_http_server(0, addr="127.0.0.1")
    server.start()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    args.port_file.write_text(json.dumps({"grpc": port, "http": http_server.server_port}))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
