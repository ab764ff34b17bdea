"""Inference metrics (prefix `churn_inference_`), defined once. Requests by status code and their latency are the
shared `churn_grpc_*` RPC metrics (services.common.metrics, counted by the interceptor), not repeated here.
Labels stay low-cardinality: model version, alias, method, status code, traffic (live/shadow)."""
from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

PREDICTIONS = Counter("churn_inference_predictions_total", "Rows scored, by model version, alias, predicted outcome "
                      "and traffic (live answers; shadow: Envoy's mirrored copies, never answered).",
                      ["model_version", "alias", "outcome", "traffic"])
BATCH_ROWS = Histogram("churn_inference_batch_rows", "Rows per prediction request.", ["method", "traffic"],
                       buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000, 50000))
RETENTION_ROWS = Histogram("churn_inference_retention_rows", "Rows one SuggestRetention request scores in its one "
                           "model call (customers + their feasible variants).",
                           buckets=(10, 100, 1000, 10000, 50000, 100000, 200000))
MODEL_INFO = Gauge("churn_inference_model_info", "1 for the model version this instance serves now.",
                   ["model_name", "model_version", "alias", "flavor"], multiprocess_mode="livemax")
COMPILE_FAILURES = Counter("churn_inference_compile_failures_total", "Loads whose trees could not be compiled (the "
                           "native model serves instead), by flavour.", ["flavor"])
MODEL_RELOADS = Counter("churn_inference_model_reloads_total", "ReloadModel outcomes: changed, unchanged, failed.",
                        ["outcome"])
OUTBOX_BACKLOG = Gauge("churn_inference_outbox_backlog", "Prediction rows committed locally, not yet acknowledged "
                       "by monitoring.", multiprocess_mode="livesum")
OUTBOX_COMMIT_ROWS = Histogram("churn_inference_outbox_commit_rows", "Rows per outbox commit (group commit size).",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 512, 2048, 8192))
SHIPPED = Counter("churn_inference_shipped_total", "Outbox rows acknowledged by monitoring.")
SET_ASIDE = Counter("churn_inference_outbox_set_aside_total", "Outbox rows monitoring refused on their own, moved "
                    "aside (never resent) so the rows behind them are delivered.")
SHIP_FAILURES = Counter("churn_inference_ship_failures_total", "Failed RecordPredictions attempts, by status code.",
                        ["code"])


# The request path's labelled children, looked up once per label set: `.labels()` checks the labels and takes a lock
# on every call (~5 µs each here). Keyed by the labels themselves, so a reload (a new version) gets its own child.
@functools.lru_cache(maxsize=256)
def predictions(version: str, alias: str, outcome: str, traffic: str):
    return PREDICTIONS.labels(version, alias, outcome, traffic)


@functools.lru_cache(maxsize=64)
def batch_rows(method: str, traffic: str):
    return BATCH_ROWS.labels(method, traffic)
