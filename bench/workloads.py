"""What `make bench` measures beyond single-row load, each side by side with the bare library on the same rows:
PredictBatch (1,000 and 10,000 rows) vs xgboost `inplace_predict`, Explain (1,000 rows) vs xgboost
`pred_contribs`, GetDriftReport on 10,000 recorded predictions vs one bare Evidently DataDriftPreset run, and the
per-request costs that bound the batch path (protobuf parse, encoding, response building), timed in-process."""
from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request

import grpc
import pandas as pd

from churn.v1 import inference_pb2, inference_pb2_grpc, monitoring_pb2, monitoring_pb2_grpc
from services.common import features as F
from services.common import model_registry as R
from services.common import telco_csv
from services.monitoring.drift import CATEGORICAL, NUMERICAL

from bench.load import metric_sum


def median_seconds(fn, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()  # first calls pay lazy imports and allocator growth on both sides alike
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def side_by_side(served, bare: dict, repeats: int, also=None,
                 warm: bool = True) -> tuple[float, float, int, float | None]:
    """Median seconds of the served call, of the bare library (and of `also`, a third call), alternated call by
    call so that load changes on the shared machine hit every side alike. `bare` maps a thread count to a call:
    the faster on a short probe is the bare side (OpenMP on a loaded 2-core machine can lose to one thread).
    `warm=False` (the short mode, whose numbers mean nothing) makes no untimed calls first and probes with one.
    Returns (served, bare, threads, also)."""
    probe = 3 if warm else 1
    threads = min(bare, key=lambda t: median_seconds(bare[t], probe, warm)) if len(bare) > 1 else next(iter(bare))
    calls = [served, bare[threads]] + ([also] if also else [])
    for call in calls if warm else ():
        call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(repeats):
        for call, found in zip(calls, times):
            found.append(_timed(call))
    medians = [statistics.median(found) for found in times]
    return medians[0], medians[1], threads, medians[2] if also else None


def rows_of(customers: list, n: int) -> list:
    """`n` rows cycled from the Telco customers, each with its own id."""
    out = []
    for i in range(n):
        row = inference_pb2.PredictRequest(customer=customers[i % len(customers)]).customer
        row.customer_id = f"bench-{i:05d}"
        out.append(row)
    return out


def shipped(production_http: int) -> float:
    """Predictions production's outbox has delivered to monitoring so far."""
    return metric_sum([production_http], "churn_inference_shipped_total")


def wait_shipped(production_http: int, total: float, timeout: float = 300) -> None:
    """Until production's outbox has delivered `total` predictions in all."""
    deadline = time.monotonic() + timeout
    while shipped(production_http) < total:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the outbox did not deliver {total:,.0f} predictions to monitoring in {timeout} s")
        time.sleep(0.05)


def batch(stub, metadata, boosters: dict, customers: list, n: int, repeats: int, anchor_stub=None,
          cpu=None, production_http: int | None = None, warm: bool = True) -> dict:
    """PredictBatch of `n` rows against the bare booster; with `anchor_stub` (the minimal gRPC server with the
    model) also what a minimal Python server takes for the same request: the bound of the batch path. `cpu()`
    (CPU seconds per suite process) gives the suite's CPU per served call; with `production_http` (its metrics
    port) that includes monitoring logging the calls' rows, which the outbox ships after them."""
    rows = rows_of(customers, n)
    request = inference_pb2.PredictBatchRequest(customers=rows)
    X = F.encode_customers(rows)
    logged = shipped(production_http) if production_http else 0.0
    reply = stub.PredictBatch(request, metadata=metadata, timeout=120)  # for the step bounds below
    served_calls = repeats + (1 if warm else 0)  # side_by_side's warm-up call and the timed ones
    if production_http:
        wait_shipped(production_http, logged + n)  # this call's rows are not the timed calls' cost
    cpu_before = cpu() if cpu else {}
    served, bare, threads, minimal = side_by_side(
        lambda: stub.PredictBatch(request, metadata=metadata, timeout=120),
        {t: (lambda b=b: b.inplace_predict(X)) for t, b in boosters.items()}, repeats,
        also=anchor_stub and (lambda: anchor_stub.PredictBatch(request, timeout=120)), warm=warm)
    if production_http:
        wait_shipped(production_http, logged + n * (1 + served_calls))
    cpu_ms = {k: (v - cpu_before[k]) * 1e3 / served_calls for k, v in cpu().items()} if cpu else {}
    wire = request.SerializeToString()
    bounds = {
        "parse_request": median_seconds(lambda: inference_pb2.PredictBatchRequest.FromString(wire), 5) * 1e3,
        "encode_rows": median_seconds(lambda: F.encode_customers(rows), 5) * 1e3,
        "serialize_response": median_seconds(reply.SerializeToString, 5) * 1e3,
        "parse_response_client": median_seconds(
            lambda: inference_pb2.PredictBatchResponse.FromString(reply.SerializeToString()), 5) * 1e3}
    if minimal is not None:
        bounds["minimal_grpc_server_same_request"] = minimal * 1e3
    return {"rows": n, "served_ms": served * 1e3, "bare_ms": bare * 1e3, "ratio": served / bare,
            "bare_threads": threads, "bounds_ms": bounds, "cpu_ms_per_call": cpu_ms}


def explain(stub, metadata, boosters: dict, customers: list, n: int, repeats: int, warm: bool = True) -> dict:
    import xgboost

    rows = rows_of(customers, n)
    request = inference_pb2.ExplainRequest(customers=rows)
    X = F.encode_customers(rows)
    served, bare, threads, _ = side_by_side(
        lambda: stub.Explain(request, metadata=metadata, timeout=120),
        {t: (lambda b=b: b.predict(xgboost.DMatrix(X), pred_contribs=True)) for t, b in boosters.items()}, repeats,
        warm=warm)
    reply = stub.Explain(request, metadata=metadata, timeout=120)
    one_thread = boosters.get(1)  # what each of the suite's workers has: the cores divided between them
    return {"rows": n, "served_ms": served * 1e3, "bare_ms": bare * 1e3, "ratio": served / bare,
            "bare_threads": threads,
            "bounds_ms": {"serialize_response": median_seconds(reply.SerializeToString, 5) * 1e3,
                          "response_bytes": len(reply.SerializeToString()),
                          **({"bare_one_thread": median_seconds(lambda: one_thread.predict(
                              xgboost.DMatrix(X), pred_contribs=True), 3, warm) * 1e3} if one_thread else {})}}


def mlflow_rows(url: str, frame: pd.DataFrame, repeats: int) -> float:
    """Milliseconds for one `/invocations` request of these raw Telco rows (dataframe_split)."""
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}).encode()

    def call():
        request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            if reply.status != 200:
                raise RuntimeError(f"mlflow answered {reply.status}")
            reply.read()
    return median_seconds(call, repeats) * 1e3


def drift(stack, inference_stub, metadata, monitoring_stub, ops_metadata, version: str, tracking_uri: str,
          model_name: str, customers: list, n: int, repeats: int, warm: bool = True) -> dict:
    """Record `n` predictions (one PredictBatch through production; its outbox ships them), then time
    GetDriftReport(window=n) against one bare Evidently run on the same reference and current frames."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    rows = rows_of(customers, n)
    production_http = stack.services["production"].http_port
    logged = shipped(production_http)
    inference_stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=rows), metadata=metadata, timeout=300)
    wait_shipped(production_http, logged + n)
    request = monitoring_pb2.GetDriftReportRequest(window=n, format="json", model_version=version)
    reply = monitoring_stub.GetDriftReport(request, metadata=ops_metadata, timeout=300)

    registry = R.ModelRegistry(tracking_uri, model_name)
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        data = registry.download(version, tmp, R.REFERENCE_TRAIN).read_bytes()
    reference = telco_csv.parse_telco_csv(data, None, 10_000_000).frame
    current = telco_csv.typed_frame(telco_csv.customers_to_frame(rows)[list(F.FEATURE_COLUMNS)])
    definition = DataDefinition(numerical_columns=list(NUMERICAL), categorical_columns=list(CATEGORICAL))

    def bare():
        snapshot = Report([DataDriftPreset()], include_tests=True).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition))
        snapshot.json()
    served, bare_s, _, _ = side_by_side(
        lambda: monitoring_stub.GetDriftReport(request, metadata=ops_metadata, timeout=300), {1: bare}, repeats,
        warm=warm)
    return {"rows": n, "reference_rows": len(reference), "served_ms": served * 1e3, "bare_ms": bare_s * 1e3,
            "ratio": served / bare_s, "current_rows_reported": reply.summary.current_rows
            if reply.HasField("summary") else None}


def channel_stubs(address: str, options):
    channel = grpc.insecure_channel(address, options=options)
    return channel, inference_pb2_grpc.InferenceServiceStub(channel), monitoring_pb2_grpc.MonitoringServiceStub(channel)


def bare_boosters(model_json: str) -> dict:
    """The registered booster twice, on one thread and on every core: the bare side is whichever is faster on
    the rows at hand (OpenMP on a loaded 2-core machine can lose to one thread)."""
    import os

    import xgboost

    found = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        booster = xgboost.Booster()
        booster.load_model(model_json)
        booster.set_param({"nthread": threads})
        found[threads] = booster
    return found


