"""Where a single Predict's time goes inside the server, timed in the bench process on the production instance's
own model (its compiled trees from the suite's cache, its thread count): protobuf parse, encoding the row, the model,
the outbox commit a prediction waits for (a scratch outbox file, never the running instance's), the whole
servicer call, and the same call through the services' interceptor (API key, the token verified against the running
auth's JWKS, request id, metrics): everything our code does for one row, apart from gRPC's own machinery. The
bounds of the single-row targets compare these with what the servers spend per call under load."""
from __future__ import annotations

import pathlib
import threading
import time
from typing import NamedTuple

import grpc
from churn.v1 import common_pb2, inference_pb2
from services.common import features as F
from services.common.auth_client import remote_verifier
from services.common.interceptor import ServiceInterceptor
from services.common.logs import request_id_var
from services.common.settings import Settings
from services.inference.app import build_parts
from services.inference.model import ModelHolder
from services.inference.outbox import Entry, Outbox
from services.inference.predictor import Predictor
from services.inference.servicer import InferenceServicer


def mean_us(fn, calls: int) -> float:
    """Mean µs per call over `calls` calls after `calls // 10` untimed ones (one call is too short to time)."""
    for _ in range(max(calls // 10, 1)):
        fn()
    began = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - began) / calls * 1e6


class _CallDetails(NamedTuple):  # grpc.HandlerCallDetails as grpc's server hands it to an interceptor
    method: str
    invocation_metadata: tuple


class _Context:
    """The little of grpc.ServicerContext the interceptor reads on an OK call (a direct caller's metadata)."""

    def __init__(self, metadata: tuple):
        self._metadata = metadata

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort_with_status(self, status) -> None:
        raise RuntimeError(f"the call failed: {status}")


def _intercepted(servicer: InferenceServicer, settings: Settings, token: str):
    """Predict as the server runs it: wrapped by the services' interceptor, a direct caller's token and API key."""
    metadata = (("authorization", f"Bearer {token}"), ("x-api-key", settings.api_key))
    handler = grpc.unary_unary_rpc_method_handler(servicer.Predict)
    wrapped = ServiceInterceptor.from_settings(remote_verifier(settings), settings).intercept_service(
        lambda details: handler, _CallDetails("/churn.v1.InferenceService/Predict", metadata))
    context = _Context(metadata)
    return lambda request: wrapped.unary_unary(request, context)


def single_row(settings: Settings, token: str, customer: common_pb2.Customer, workdir: pathlib.Path,
               calls: int) -> dict:
    """µs per step for one Predict of `customer` (mean of `calls`), as served by `settings`' production instance
    to a caller with `token`."""
    parts = build_parts(settings, "production", ship=False)
    holder = ModelHolder(parts.registry, "production", parts.compiled_dir)
    holder.load_until_ready(threading.Event(), lambda: None)
    workdir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(workdir / "steps-outbox.db")
    servicer = InferenceServicer(Predictor(holder, outbox, parts.limits), advisor=None)  # Predict only
    wire = inference_pb2.PredictRequest(customer=customer).SerializeToString()
    X = F.encode_customers([customer])
    counter = iter(range(10**9))
    intercepted = _intercepted(servicer, settings, token)  # the interceptor gives each call a request id

    def served() -> bytes:
        """The servicer's call, under a request id of its own (its rows' keys: a repeated one is not written)."""
        request_id_var.set(f"bench-steps-{next(counter)}")
        return servicer.Predict(inference_pb2.PredictRequest.FromString(wire), None).SerializeToString()

    request_id = request_id_var.set("bench-steps")
    try:
        served()
        record = outbox.pending(1)[0].record  # what a served Predict commits
        return {
            "parse_request": mean_us(lambda: inference_pb2.PredictRequest.FromString(wire), calls),
            "encode_row": mean_us(lambda: F.encode_customers([customer]), calls),
            "model": mean_us(lambda: holder.current.native.probability(X), calls),
            # the record a Predict commits, under a key of its own each time
            "outbox_commit": mean_us(lambda: outbox.append([Entry(f"steps-{next(counter)}", record)]), calls),
            "servicer_call": mean_us(lambda: served(), calls),
            "intercepted_call": mean_us(lambda: intercepted(inference_pb2.PredictRequest.FromString(wire))
                                        .SerializeToString(), calls),
        }
    finally:
        request_id_var.reset(request_id)
        outbox.close()
