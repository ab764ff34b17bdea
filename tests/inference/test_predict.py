"""Contract tests through a real in-process server: typed predictions equal the training path on every Telco row
(both aliases), explanations add up, CSV scoring, streams, model info, roles."""
from __future__ import annotations

import math
import sqlite3

import grpc
import numpy as np
import pandas as pd
import pytest
from churn.v1 import common_pb2, inference_pb2, monitoring_pb2
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from prometheus_client import REGISTRY

from services.common import telco_csv
from tests import natives as natives_
from tests.inference.conftest import TELCO_CSV

CHUNK = 1000


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    """The Telco CSV as pandas reads it; the blank TotalCharges (" ") become NaN as the model signature wants."""
    frame = pd.read_csv(TELCO_CSV)
    return frame.assign(TotalCharges=pd.to_numeric(frame.TotalCharges, errors="coerce"))


@pytest.fixture(scope="module")
def customers(raw) -> list[common_pb2.Customer]:
    return telco_csv.frame_to_customers(raw)


@pytest.fixture(scope="module")
def pyfunc_predictions(registry, raw, tmp_path_factory):
    """P(churn) per alias from the REGISTERED pyfunc (pandas frame in, the training path's encode_frame inside)."""
    import mlflow.pyfunc

    out = {}
    for alias in ("production", "staging"):
        _, root = natives_.download(registry, alias, tmp_path_factory.mktemp(alias))
        out[alias] = np.asarray(mlflow.pyfunc.load_model(str(root)).predict(raw), dtype=np.float64)
    return out


@pytest.mark.parametrize("alias,flavor", [("production", "xgboost"), ("staging", "sklearn")])
def test_typed_predictions_equal_the_registered_pyfunc_on_all_rows(servers, customers, raw, pyfunc_predictions,
                                                                   alias, flavor):
    client = servers[alias][1]
    got, versions = [], set()
    for start in range(0, len(customers), CHUNK):
        reply = client.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers[start:start + CHUNK]),
                                         metadata=client.metadata())
        got += [p.probability for p in reply.predictions]
        versions |= {(p.model.name, p.model.version, p.model.alias) for p in reply.predictions}
        assert [p.customer_id for p in reply.predictions] == raw.customerID[start:start + CHUNK].tolist()
    assert len(got) == len(raw) == 7043
    np.testing.assert_allclose(got, pyfunc_predictions[alias], rtol=0, atol=1e-6)
    info = client.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), metadata=client.metadata())
    assert info.flavor == flavor
    assert versions == {(info.model.name, info.model.version, alias)}


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_single_predict_matches_batch_and_carries_the_model(servers, customers, pyfunc_predictions, alias):
    client = servers[alias][1]
    for i in (0, 1, 488, 7042):  # 488 has a blank TotalCharges
        reply = client.stub.Predict(inference_pb2.PredictRequest(customer=customers[i]), metadata=client.metadata())
        assert abs(reply.prediction.probability - pyfunc_predictions[alias][i]) < 1e-6
        assert reply.prediction.churn == (reply.prediction.probability >= 0.5)
        assert reply.prediction.model.alias == alias and reply.prediction.model.version


@pytest.fixture(scope="module")
def natives(registry, tmp_path_factory):
    out = {}
    for alias in ("production", "staging"):
        _, root = natives_.download(registry, alias, tmp_path_factory.mktemp("n"))
        out[alias] = natives_.raw_native(root)
    return out


def _native_margin(flavor, model, X):
    if flavor == "xgboost":
        return model.inplace_predict(X, predict_type="margin")
    return model.decision_function(X)


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_explanations_add_up_to_the_margin(servers, customers, natives, alias):
    from services.common import features as F

    client = servers[alias][1]
    rng = np.random.default_rng(7)
    sample = [customers[i] for i in rng.choice(len(customers), 500, replace=False)]
    reply = client.stub.Explain(inference_pb2.ExplainRequest(customers=sample), metadata=client.metadata("admin"))
    flavor, model = natives[alias]
    margins = _native_margin(flavor, model, F.encode_customers(sample))
    assert len(reply.explanations) == 500
    for explanation, customer, margin in zip(reply.explanations, sample, margins):
        assert [c.feature for c in explanation.contributions] == list(F.FEATURE_NAMES)
        total = sum(c.shap_value for c in explanation.contributions) + explanation.base_value
        assert abs(total - margin) < 1e-4
        assert abs(explanation.margin - margin) < 1e-5
        assert abs(explanation.probability - 1 / (1 + math.exp(-margin))) < 1e-5
        assert explanation.customer_id == customer.customer_id
    contract = {c.feature: c.value for c in reply.explanations[0].contributions}["contract"]
    assert contract in ("Month-to-month", "One year", "Two year")


def test_top_k_reasons_are_the_largest_contributions(servers, customers):
    client = servers["production"][1]
    customer = customers[3]
    reply = client.stub.Predict(inference_pb2.PredictRequest(customer=customer, explain_top_k=3),
                                metadata=client.metadata())
    full = client.stub.Explain(inference_pb2.ExplainRequest(customers=[customer]), metadata=client.metadata("admin"))
    ranked = sorted(full.explanations[0].contributions, key=lambda c: -abs(c.shap_value))[:3]
    assert [(r.feature, r.value) for r in reply.prediction.reasons] == [(c.feature, c.value) for c in ranked]
    for reason, c in zip(reply.prediction.reasons, ranked):
        assert abs(reason.contribution - c.shap_value) < 1e-9


def test_explain_is_admin_only(production, customers):
    with pytest.raises(grpc.RpcError) as error:
        production.stub.Explain(inference_pb2.ExplainRequest(customers=customers[:1]), metadata=production.metadata())
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_csv_with_churn_column_reports_accuracy_and_reasons(production):
    lines = TELCO_CSV.read_bytes().splitlines(keepends=True)
    body = b"".join(lines[:201])
    reply = production.stub.PredictCsv(
        inference_pb2.PredictCsvRequest(csv=httpbody_pb2.HttpBody(content_type="text/csv", data=body),
                                        explain_top_k=2), metadata=production.metadata())
    assert len(reply.predictions) == 200 and reply.HasField("accuracy")
    truth = pd.read_csv(TELCO_CSV, nrows=200).Churn.eq("Yes").to_numpy()
    assert reply.accuracy == pytest.approx(float(np.mean(truth == [p.churn for p in reply.predictions])))
    assert all(len(p.reasons) == 2 for p in reply.predictions)
    assert reply.model.alias == "production"
    no_label = pd.read_csv(TELCO_CSV, nrows=5).drop(columns=["Churn"]).to_csv(index=False).encode()
    reply = production.stub.PredictCsv(inference_pb2.PredictCsvRequest(csv=httpbody_pb2.HttpBody(data=no_label)),
                                       metadata=production.metadata())
    assert len(reply.predictions) == 5 and not reply.HasField("accuracy")


def test_stream_answers_each_message_and_survives_bad_ones(production, customers):
    bad = common_pb2.Customer()
    bad.CopyFrom(customers[1])
    bad.contract = common_pb2.CONTRACT_UNSPECIFIED
    messages = [inference_pb2.StreamPredictRequest(message_id="a", customer=customers[0]),
                inference_pb2.StreamPredictRequest(message_id="b", customer=bad),
                inference_pb2.StreamPredictRequest(message_id="c", customer=customers[2], explain_top_k=1)]
    replies = list(production.stub.StreamPredict(iter(messages), metadata=production.metadata("service")))
    assert [r.message_id for r in replies] == ["a", "b", "c"]
    assert replies[0].HasField("prediction") and replies[2].HasField("prediction")
    assert len(replies[2].prediction.reasons) == 1
    assert replies[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    details = error_details_pb2.BadRequest()
    replies[1].error.details[0].Unpack(details)
    assert details.field_violations[0].field == "customer.contract"
    assert len({replies[0].prediction.prediction_id, replies[2].prediction.prediction_id}) == 2


def test_model_info_and_alias_checks(servers):
    for alias, flavor in (("production", "xgboost"), ("staging", "sklearn")):
        client = servers[alias][1]
        info = client.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(alias=alias), metadata=client.metadata())
        assert (info.model.alias, info.flavor) == (alias, flavor)
        assert info.run_id and info.metrics["roc_auc"] > 0.7
        assert {f.name for f in info.features} >= {"contract", "tenure", "total_charges"}
        assert info.loaded_at.seconds > 0
        other = "staging" if alias == "production" else "production"
        with pytest.raises(grpc.RpcError) as error:
            client.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(alias=other), metadata=client.metadata())
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "alias" in error.value.details()


def test_retried_request_id_gives_the_same_prediction_ids(production, customers, settings):
    """Through the gateway (its stamp on the call) a retry reuses Envoy's request id; a direct caller's repeated id
    does not (tests/inference/test_direct_calls.py)."""
    request = inference_pb2.PredictBatchRequest(customers=customers[:3])
    via_envoy = [*production.metadata(request_id="req-retry-1"), ("x-churn-gateway", settings.gateway_secret)]
    first = production.stub.PredictBatch(request, metadata=via_envoy)
    again = production.stub.PredictBatch(request, metadata=via_envoy)
    ids = [p.prediction_id for p in first.predictions]
    assert ids == [p.prediction_id for p in again.predictions] == ["req-retry-1-0", "req-retry-1-1", "req-retry-1-2"]
    other = production.stub.PredictBatch(request, metadata=production.metadata())
    assert not set(ids) & {p.prediction_id for p in other.predictions}


def _logged(outbox_file, prediction_id: str) -> tuple[monitoring_pb2.PredictionColumns, int]:
    """The outbox record holding `prediction_id` (one PredictionColumns per request) and the row's index in it."""
    with sqlite3.connect(outbox_file) as db:
        blobs = [blob for (blob,) in db.execute("SELECT record FROM outbox WHERE kind = 'columns'")]
    for blob in blobs:
        batch = monitoring_pb2.PredictionColumns.FromString(blob)
        if prediction_id in batch.prediction_ids:
            return batch, list(batch.prediction_ids).index(prediction_id)
    raise AssertionError(f"{prediction_id} is not in the outbox")


def test_envoys_shadow_copy_is_logged_marked_and_counted_apart(servers, customers, settings):
    """The mirror policy's mark on a call Envoy forwarded (its stamp) makes a shadow call: `<id>-shadow-<row>` rows
    with `shadow` set and the request id of the answer it copies, counted under traffic="shadow". The same mark
    on a direct call (no stamp) is ignored."""
    inference, staging = servers["staging"]
    request = inference_pb2.PredictBatchRequest(customers=customers[:2])
    stamp = ("x-churn-gateway", settings.gateway_secret)
    before = {t: REGISTRY.get_sample_value("churn_grpc_requests_total", {
        "service": "churn.v1.InferenceService", "method": "PredictBatch", "code": "OK", "traffic": t}) or 0.0
        for t in ("live", "shadow")}
    mirrored = staging.stub.PredictBatch(request, metadata=[*staging.metadata(request_id="req-mirror-1"), stamp,
                                                            ("x-churn-shadow", "1")])
    assert [p.prediction_id for p in mirrored.predictions] == ["req-mirror-1-shadow-0", "req-mirror-1-shadow-1"]
    record, row = _logged(inference.outbox.path, "req-mirror-1-shadow-1")
    assert record.shadow is True and record.request_id == "req-mirror-1"
    assert record.customer_ids[row] == customers[1].customer_id
    served = staging.stub.PredictBatch(request, metadata=[*staging.metadata(request_id="req-mirror-2"), stamp])
    assert _logged(inference.outbox.path, served.predictions[0].prediction_id)[0].shadow is False
    forged = staging.stub.PredictBatch(request, metadata=[*staging.metadata(), ("x-churn-shadow", "1")])
    assert "-shadow-" not in forged.predictions[0].prediction_id
    assert _logged(inference.outbox.path, forged.predictions[0].prediction_id)[0].shadow is False
    after = {t: REGISTRY.get_sample_value("churn_grpc_requests_total", {
        "service": "churn.v1.InferenceService", "method": "PredictBatch", "code": "OK", "traffic": t})
        for t in ("live", "shadow")}
    assert (after["shadow"] - before["shadow"], after["live"] - before["live"]) == (1, 2)
    rows = REGISTRY.get_sample_value("churn_inference_predictions_total", {
        "model_version": mirrored.model.version, "alias": "staging",
        "outcome": "churn" if mirrored.predictions[0].churn else "no_churn", "traffic": "shadow"})
    assert rows and rows >= 1
