"""Where a single Predict's time goes inside the server, timed in the bench process on the production instance's
own model (its compiled trees from the suite's cache, its thread count): protobuf parse, encoding the row, the model,
the outbox commit a prediction waits for (a scratch outbox file, never the running instance's), and the whole
servicer call (everything our code does for one row apart from gRPC and the interceptor). The bounds of the
single-row targets compare these with what the servers spend per call under load."""
from __future__ import annotations

import pathlib
import threading
import time

from churn.v1 import common_pb2, inference_pb2
from services.common import features as F
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


def single_row(settings: Settings, customer: common_pb2.Customer, workdir: pathlib.Path, calls: int) -> dict:
    """µs per step for one Predict of `customer` (mean of `calls`), as served by `settings`' production instance."""
    parts = build_parts(settings, "production", ship=False)
    holder = ModelHolder(parts.registry, "production", parts.compiled_dir)
    holder.load_until_ready(threading.Event(), lambda: None)
    workdir.mkdir(parents=True, exist_ok=True)
    outbox = Outbox(workdir / "steps-outbox.db")
    servicer = InferenceServicer(Predictor(holder, outbox, parts.limits), advisor=None)  # Predict only
    wire = inference_pb2.PredictRequest(customer=customer).SerializeToString()
    X = F.encode_customers([customer])
    counter = iter(range(10**9))
    token = request_id_var.set("bench-steps")
    try:
        servicer.Predict(inference_pb2.PredictRequest.FromString(wire), None)
        record = outbox.pending(1)[0].record  # what a served Predict commits
        return {
            "parse_request": mean_us(lambda: inference_pb2.PredictRequest.FromString(wire), calls),
            "encode_row": mean_us(lambda: F.encode_customers([customer]), calls),
            "model": mean_us(lambda: holder.current.native.probability(X), calls),
            # the record a Predict commits, under a key of its own each time (a repeated key is not written)
            "outbox_commit": mean_us(lambda: outbox.append([Entry(f"steps-{next(counter)}", record)]), calls),
            "servicer_call": mean_us(lambda: servicer.Predict(inference_pb2.PredictRequest.FromString(wire),
                                                              None).SerializeToString(), calls),
        }
    finally:
        request_id_var.reset(token)
        outbox.close()
