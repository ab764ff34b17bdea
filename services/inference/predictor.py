"""The inference data plane, free of gRPC: validate → encode (features module, straight to numpy) → score on the
calling thread → optional reasons → commit the outbox record → answer. The record is the request's predictions in
columns (`prediction_record.columns_messages`): the field values the encoder read, the ids and the probabilities as
arrays, one message per request rather than one per row.

Prediction ids are `<request id>-<row>`: Envoy gives every request an `x-request-id` and keeps it on retries, so a
retried request produces the same ids and monitoring drops the duplicate. A direct caller's own id gets a server
nonce first (services/common/direct_calls.py), so a repeated id never drops a prediction. A shadow call (Envoy's
mirrored copy, services/common/shadow.py) carries the request id of the call production answered: its rows are
`<request id>-shadow-<row>`, logged with `shadow` set and the same request id, so monitoring pairs the two answers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from churn.v1 import common_pb2, inference_pb2

from services.common import features as F
from services.common import prediction_record, shadow, telco_csv
from services.common.errors import InvalidInput, ResourceExhausted
from services.inference import explain, metrics
from services.inference.model import LoadedModel, ModelHolder
from services.inference.outbox import Entry, Outbox
from services.inference.workers import WorkerGroup

MAX_REQUEST_ID_CHARS = 64


@dataclasses.dataclass(frozen=True)
class Limits:
    max_batch_rows: int
    max_csv_bytes: int
    max_csv_rows: int
    max_reply_bytes: int = 16 * 1024 * 1024  # the one message size (MAX_MESSAGE_MB): a reply must fit it too

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.max_batch_rows, settings.max_message_bytes, settings.max_csv_rows,
                   settings.max_message_bytes)


@dataclasses.dataclass
class Scored:
    """A request's answers as columns; they become Prediction messages only where a response holds them, built in
    place there (`add_to`, `fill`): a message built apart and then passed to a response is copied again."""
    model: LoadedModel
    ref: common_pb2.ModelRef
    prediction_ids: list[str]
    customer_ids: Sequence[str]
    probabilities: np.ndarray  # float64 per row
    churn: np.ndarray  # bool per row
    reasons: list[list[tuple[str, str, float]]] | None  # per row (field, value, contribution), when asked for

    def __len__(self) -> int:
        return len(self.prediction_ids)

    def add_to(self, predictions) -> None:
        """Append every row's Prediction to a response's repeated field."""
        add = predictions.add
        for i, (pid, cid, p, c) in enumerate(zip(self.prediction_ids, self.customer_ids,
                                                 self.probabilities.tolist(), self.churn.tolist())):
            prediction = add(prediction_id=pid, customer_id=cid, churn=c, probability=p)
            prediction.model.CopyFrom(self.ref)
            if self.reasons is not None:
                self._add_reasons(prediction, i)

    def fill(self, prediction: inference_pb2.Prediction, i: int = 0) -> None:
        """Row `i`'s answer into a (response's) Prediction message."""
        prediction.prediction_id = self.prediction_ids[i]
        prediction.customer_id = self.customer_ids[i]
        prediction.churn = bool(self.churn[i])
        prediction.probability = float(self.probabilities[i])
        prediction.model.CopyFrom(self.ref)
        if self.reasons is not None:
            self._add_reasons(prediction, i)

    def _add_reasons(self, prediction: inference_pb2.Prediction, i: int) -> None:
        add = prediction.reasons.add
        for feature, value, contribution in self.reasons[i]:
            add(feature=feature, value=value, contribution=contribution)


def model_ref(model: LoadedModel) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=model.name, version=model.version, alias=model.alias)


def prediction_id_prefix(request_id: str) -> str:
    """The request id, or its hash when a caller sent something too long to be a sensible key."""
    if len(request_id) <= MAX_REQUEST_ID_CHARS:
        return request_id
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


class Predictor:
    def __init__(self, holder: ModelHolder, outbox: Outbox, limits: Limits,
                 clock: Callable[[], float] = time.time, siblings: WorkerGroup | None = None):
        self._holder = holder
        self._outbox = outbox
        self.limits = limits
        self._clock = clock
        self._siblings = siblings  # the other worker processes on this port, told to reload with this one
        self._ref: tuple[LoadedModel, common_pb2.ModelRef] | None = None  # see `_model_ref`

    def _model_ref(self, model: LoadedModel) -> common_pb2.ModelRef:
        """`model_ref(model)`, built once per loaded model (a reload brings a new one); never changed afterwards:
        messages built with it copy it."""
        ref = self._ref
        if ref is None or ref[0] is not model:
            ref = self._ref = (model, model_ref(model))
        return ref[1]

    def _check_rows(self, n: int, field: str) -> None:
        if n == 0:
            raise InvalidInput(field, "at least one customer is required")
        if n > self.limits.max_batch_rows:
            raise ResourceExhausted(f"{field}: {n} rows in one request, the limit is {self.limits.max_batch_rows} "
                                    "(send smaller batches)")

    def predict(self, customers: Sequence[common_pb2.Customer], *, request_id: str, explain_top_k: int = 0,
                method: str = "PredictBatch", label: str | Callable[[int], str] = "customers",
                first_index: int = 0) -> Scored:
        """Score typed customers. `label` names fields in errors (`customers[3].tenure`, or `customer.tenure`)."""
        started = time.perf_counter()
        self._check_rows(len(customers), label if isinstance(label, str) else label(0))
        row_label = label if callable(label) else (lambda i: f"{label}[{i}]")
        customer_ids = [c.customer_id for c in customers]
        prediction_record.check_customer_ids(customer_ids, lambda i: f"{row_label(i)}.customer_id")
        values, absent = F.customer_values(customers)
        X = F.encode_values(values, label, absent)
        return self._score(X, values, customer_ids, request_id=request_id, explain_top_k=explain_top_k,
                           method=method, started=started, first_index=first_index)

    def predict_csv(self, data: bytes, *, request_id: str, explain_top_k: int = 0) -> tuple[Scored, float | None]:
        """Score a Telco CSV; with a Churn column, also the accuracy against it (rows with a blank label skipped)."""
        started = time.perf_counter()
        parsed = telco_csv.parse_telco_csv(data, self.limits.max_csv_bytes, self.limits.max_csv_rows)
        prediction_record.check_customer_ids(parsed.customer_ids, lambda i: f"csv line {parsed.lines[i]}: customerID")
        scored = self._score(parsed.encoded, parsed.values, parsed.customer_ids, request_id=request_id,
                             explain_top_k=explain_top_k, method="PredictCsv", started=started)
        accuracy = None
        if parsed.churn is not None:
            known = parsed.churn.notna().to_numpy()
            if known.any():
                truth = parsed.churn.to_numpy(dtype=bool, na_value=False)[known]
                predicted = scored.churn[known]
                accuracy = float((truth == predicted).mean())
        return scored, accuracy

    def predict_frame(self, raw: pd.DataFrame, customer_ids: Sequence[str], *, request_id: str, method: str,
                      rows_field: str, where: Callable[[int], str]) -> Scored:
        """Score a frame of Telco columns in CSV spellings (the Open Inference Protocol's tensors), validated by the
        CSV path's rules; bad cells are named `<where(row)>: <Column>`, a bad row count `rows_field`."""
        started = time.perf_counter()
        self._check_rows(len(raw), rows_field)
        prediction_record.check_customer_ids(customer_ids, lambda i: f"{where(i)}: {F.ID_COLUMN}")
        values = F.frame_values(raw, line_of=where)
        return self._score(F.encode_values(values, where), values, customer_ids, request_id=request_id,
                           explain_top_k=0, method=method, started=started)

    def _score(self, X: np.ndarray, values: np.ndarray, customer_ids: Sequence[str], *,
               request_id: str, explain_top_k: int, method: str, started: float, first_index: int = 0) -> Scored:
        """`values`: the rows' field values (`features.customer_values`), logged as the inputs."""
        model = self._holder.current  # read once: a reload mid-request does not mix two models
        probabilities = np.asarray(model.native.probability(X), dtype=np.float64)
        churn = probabilities >= model.threshold
        reasons = (explain.top_reasons(model.contributions(X), X, explain_top_k) if explain_top_k
                   else None)
        ref = self._model_ref(model)
        mirrored = shadow.is_shadow()
        prefix = prediction_id_prefix(request_id) + (prediction_record.SHADOW_ID_INFIX if mirrored else "")
        ids = [f"{prefix}-{i}" for i in range(first_index, first_index + len(customer_ids))]
        scored = Scored(model, ref, ids, customer_ids, probabilities, churn, reasons)
        self._check_reply_size(scored, explain_top_k)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._outbox.append([Entry(record.prediction_ids[0], record.SerializeToString(),
                                   predictions=len(record.prediction_ids))
                             for record in prediction_record.columns_messages(
                                 ids, customer_ids, probabilities, churn, values, model=ref, latency_ms=latency_ms,
                                 predicted_at=prediction_record.timestamp(self._clock()), request_id=request_id,
                                 shadow=mirrored)])
        n_churn, traffic = int(np.count_nonzero(churn)), shadow.traffic()
        if n_churn:
            metrics.predictions(model.version, model.alias, "churn", traffic).inc(n_churn)
        if len(scored) - n_churn:
            metrics.predictions(model.version, model.alias, "no_churn", traffic).inc(len(scored) - n_churn)
        metrics.batch_rows(method, traffic).observe(len(scored))
        return scored

    def _check_reply_size(self, scored: Scored, explain_top_k: int) -> None:
        """A reply over the message size would fail after the fact (the caller gets nothing, yet every row would be
        logged): refuse it before anything is logged. The exact size is measured only when a generous bound per
        row (ids of 128 characters, reasons of long values) does not already show it fits: not on the hot path."""
        if len(scored) * (600 + 300 * explain_top_k) <= self.limits.max_reply_bytes:
            return
        reply = inference_pb2.PredictCsvResponse(model=scored.ref, accuracy=0.0)  # the largest reply of these rows
        scored.add_to(reply.predictions)
        size = reply.ByteSize()
        if size > self.limits.max_reply_bytes:
            raise ResourceExhausted(f"the reply would be {size} bytes, the limit is {self.limits.max_reply_bytes}: "
                                    f"send fewer rows{' or a smaller explain_top_k' if explain_top_k else ''}")

    def explain(self, customers: Sequence[common_pb2.Customer]) -> inference_pb2.ExplainResponse:
        """Full TreeSHAP per customer field; base + Σ shap_value == margin (log-odds for both flavours). Built
        with `add` straight into the response: a message built apart and then passed in is copied."""
        self._check_rows(len(customers), "customers")
        X = F.encode_customers(customers, label="customers")
        model = self._holder.current
        contributions = model.contributions(X)
        margins, probabilities = model.native.margin_and_probability(X)
        response = inference_pb2.ExplainResponse(model=model_ref(model))
        add = response.explanations.add
        for customer, base, margin, probability, shap_values, values in zip(
                customers, contributions.base.tolist(), np.asarray(margins, dtype=np.float64).tolist(),
                np.asarray(probabilities, dtype=np.float64).tolist(), contributions.fields.tolist(),
                explain.rows_values(X)):
            contribution = add(customer_id=customer.customer_id, base_value=base, margin=margin,
                               probability=probability).contributions.add
            for name, value, shap_value in zip(F.FEATURE_NAMES, values, shap_values):
                contribution(feature=name, value=value, shap_value=shap_value)
        return response

    def model_info(self, alias: str) -> inference_pb2.GetModelInfoResponse:
        self._holder.check_alias(alias)
        model = self._holder.current
        response = inference_pb2.GetModelInfoResponse(
            model=model_ref(model), flavor=model.flavor, run_id=model.run_id, metrics=model.metrics,
            features=[inference_pb2.FeatureSpec(name=f["name"], kind=f["kind"], categories=f.get("categories", []))
                      for f in model.features])
        response.loaded_at.FromDatetime(model.loaded_at)
        return response

    def reload(self, alias: str) -> inference_pb2.ReloadModelResponse:
        self._holder.check_alias(alias)
        result = self._holder.reload()
        if self._siblings is not None:
            self._siblings.reload_siblings(result.current.version)
        response = inference_pb2.ReloadModelResponse(current=model_ref(result.current), changed=result.changed)
        if result.previous is not None:
            response.previous.CopyFrom(model_ref(result.previous))
        return response
