"""The prediction log path: outbox (group commit, durable, deduplicated) and the shipper against a real monitoring
server — monitoring down, back up, restarted; inference restarted with undelivered rows; resent batches; tokens."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest
from churn.v1 import inference_pb2, monitoring_pb2
from google.api import httpbody_pb2

from services.common import features as F
from services.common import telco_csv
from services.inference.outbox import RECORD, Entry, Outbox
from services.inference.shipper import MonitoringSink, ServiceToken, ShipError, Shipper
from tests.inference.conftest import TELCO_CSV, Client, start_app
from tests.inference.monitoring_server import RecordingMonitoring, start_monitoring

FAST = {"initial_backoff": 0.05, "max_backoff": 0.3, "idle_wait": 0.1}
CUSTOMERS = telco_csv.frame_to_customers(pd.read_csv(TELCO_CSV, nrows=40).assign(
    TotalCharges=lambda f: pd.to_numeric(f.TotalCharges, errors="coerce")))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---- the outbox alone ---------------------------------------------------------------------------------------------
def test_outbox_group_commits_concurrent_rows_and_keeps_them_across_reopen(tmp_path, monkeypatch):
    """The first commit is held open while 15 more appends queue behind it: they go out in ONE commit (no
    dependence on how threads happen to interleave)."""
    outbox = Outbox(tmp_path / "o.db")
    commits, gate = [], threading.Event()
    real_commit = outbox._commit

    def held_commit(batch):
        commits.append(sum(len(ticket.rows) for ticket in batch))
        if len(commits) == 1:
            assert gate.wait(10)
        real_commit(batch)
    monkeypatch.setattr(outbox, "_commit", held_commit)

    first = threading.Thread(target=outbox.append, args=([Entry(f"first-{i}", b"x") for i in range(785)],))
    first.start()
    wait_for(lambda: commits == [785], what="the first commit")
    queued = [threading.Thread(target=outbox.append, args=([Entry(f"t{t}", b"x")],)) for t in range(15)]
    for thread in queued:
        thread.start()
    wait_for(lambda: len(outbox._queue) == 15, what="15 queued appends")
    gate.set()
    for thread in [first, *queued]:
        thread.join(10)
    assert commits == [785, 15] and outbox.backlog() == 800
    outbox.append([Entry("t0", b"again", predictions=40)])  # a retried prediction id adds nothing
    assert outbox.backlog() == 800
    outbox.close()
    reopened = Outbox(tmp_path / "o.db")
    assert reopened.backlog() == 800
    rows = reopened.pending(1000)
    assert len({r.prediction_id for r in rows}) == 800 and rows[0].record == b"x"
    assert reopened.acknowledge(rows[:300]) == 300 and reopened.backlog() == 500
    reopened.close()


# ---- against a real monitoring server ------------------------------------------------------------------------------
@pytest.fixture
def token_file(tmp_path, keys):
    path = tmp_path / "service_token"
    path.write_text(keys.mint(subject="svc-inference", role="service", ttl=3600))
    return path


def sink_for(settings, port: int, token_file) -> MonitoringSink:
    return MonitoringSink(f"127.0.0.1:{port}", ServiceToken("", token_file), settings.api_key,
                          settings.grpc_options(), timeout=3)


def predict_some(client: Client, start: int, count: int) -> list[str]:
    reply = client.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=CUSTOMERS[start:start + count]),
                                     metadata=client.metadata())
    return [p.prediction_id for p in reply.predictions]


def test_monitoring_down_then_up_then_restarted_every_row_arrives_once(settings, keys, tmp_path, token_file):
    port = free_port()
    inference = start_app(settings, keys, tmp_path, "production", sink=sink_for(settings, port, token_file),
                          shipper_options=FAST)
    client = Client(f"127.0.0.1:{inference.port}", settings, keys)
    store = RecordingMonitoring(tmp_path / "monitoring.db")
    try:
        answered = predict_some(client, 0, 10) + predict_some(client, 10, 10)  # monitoring is down: still answered
        time.sleep(0.5)
        assert inference.outbox.backlog() == 20
        monitoring = start_monitoring(settings, keys.verifier(), port, store)
        wait_for(lambda: inference.outbox.backlog() == 0, what="backlog to drain")
        assert sorted(store.records()) == sorted(answered)
        monitoring.stop(0)  # monitoring restarts: rows wait again, then arrive
        answered += predict_some(client, 20, 15)
        time.sleep(0.3)
        assert inference.outbox.backlog() == 15
        monitoring = start_monitoring(settings, keys.verifier(), port, store)
        wait_for(lambda: inference.outbox.backlog() == 0, what="backlog to drain after monitoring restart")
        records = store.records()
        assert sorted(records) == sorted(answered) and len(answered) == 35 and store.duplicates == 0
        record = records[answered[0]]
        assert record.model.alias == "production" and list(record.customer_ids) == [CUSTOMERS[0].customer_id]
        assert record.predicted_at.seconds > 0 and record.request_id and record.latency_ms > 0
        monitoring.stop(0)
    finally:
        client.close()
        inference.stop(0)


def test_inference_restart_delivers_rows_left_in_the_outbox(settings, keys, tmp_path, token_file):
    port = free_port()
    outbox_file = tmp_path / "restart-outbox.db"
    first = start_app(settings, keys, tmp_path, "production", outbox_file=outbox_file,
                      sink=sink_for(settings, port, token_file), shipper_options=FAST)
    client = Client(f"127.0.0.1:{first.port}", settings, keys)
    answered = predict_some(client, 0, 12)
    client.close()
    first.stop(0)  # monitoring never came up: 12 rows undelivered
    store = RecordingMonitoring(tmp_path / "monitoring.db")
    monitoring = start_monitoring(settings, keys.verifier(), port, store)
    second = start_app(settings, keys, tmp_path, "production", outbox_file=outbox_file,
                       sink=sink_for(settings, port, token_file), shipper_options=FAST)
    try:
        wait_for(lambda: second.outbox.backlog() == 0, what="rows from before the restart")
        assert sorted(store.records()) == sorted(answered)
    finally:
        second.stop(0)
        monitoring.stop(0)


class LosesFirstAck:
    """Delivers, then reports failure once, as if the acknowledgement was lost on the way back."""

    def __init__(self, sink):
        self._sink = sink
        self.lost = 0

    def send(self, records):
        self._sink.send(records)
        if not self.lost:
            self.lost += 1
            raise ShipError("UNAVAILABLE", "acknowledgement lost")


def test_resent_batch_is_deduplicated_by_prediction_id(settings, keys, tmp_path, token_file):
    port = free_port()
    store = RecordingMonitoring(tmp_path / "monitoring.db")
    monitoring = start_monitoring(settings, keys.verifier(), port, store)
    outbox = Outbox(tmp_path / "dedup.db")
    outbox.append([Entry(f"req-{i}", monitoring_pb2.PredictionRecord(prediction_id=f"req-{i}").SerializeToString(),
                         RECORD) for i in range(25)])
    sink = LosesFirstAck(sink_for(settings, port, token_file))
    shipper = Shipper(outbox, sink, batch_size=10, **FAST).start()
    try:
        wait_for(lambda: outbox.backlog() == 0, what="shipping with a lost ack")
        assert sink.lost == 1 and store.duplicates == 10  # the first batch arrived twice
        assert sorted(store.records()) == sorted(f"req-{i}" for i in range(25))
    finally:
        shipper.stop()
        outbox.close()
        monitoring.stop(0)


def test_without_a_service_token_rows_wait_until_one_appears(settings, keys, tmp_path):
    port = free_port()
    store = RecordingMonitoring(tmp_path / "monitoring.db")
    monitoring = start_monitoring(settings, keys.verifier(), port, store)
    token_path = tmp_path / "later_token"
    outbox = Outbox(tmp_path / "token.db")
    outbox.append([Entry("t-1", monitoring_pb2.PredictionRecord(prediction_id="t-1").SerializeToString(), RECORD)])
    shipper = Shipper(outbox, sink_for(settings, port, token_path), **FAST).start()
    try:
        time.sleep(0.5)
        assert outbox.backlog() == 1 and store.calls == 0
        token_path.write_text(keys.mint(subject="svc", role="agent"))  # wrong role: refused by monitoring
        time.sleep(0.5)
        assert outbox.backlog() == 1 and store.calls == 0
        token_path.write_text(keys.mint(subject="svc", role="service"))  # re-minted: picked up without restart
        wait_for(lambda: outbox.backlog() == 0, what="delivery with the new token")
        assert list(store.records()) == ["t-1"]
    finally:
        shipper.stop()
        outbox.close()
        monitoring.stop(0)


def test_a_request_commits_its_predictions_as_columns_and_the_csv_path_logs_the_same_inputs(settings, keys, tmp_path):
    """PredictBatch of 1,000 rows: two PredictionColumns records of 500 (not 1,000 messages), holding the ids and
    probabilities answered and the field values of the request; PredictCsv of the same rows logs the same values."""
    inference = start_app(settings, keys, tmp_path, "production")
    client = Client(f"127.0.0.1:{inference.port}", settings, keys)
    frame = pd.read_csv(TELCO_CSV, nrows=1000, dtype=str, keep_default_na=False)
    customers = telco_csv.frame_to_customers(frame.assign(TotalCharges=pd.to_numeric(frame.TotalCharges,
                                                                                     errors="coerce")))
    try:
        reply = client.stub.PredictBatch(inference_pb2.PredictBatchRequest(customers=customers),
                                         metadata=client.metadata())
        rows = inference.outbox.pending(10_000)
        assert [(r.kind, r.predictions) for r in rows] == [("columns", 500), ("columns", 500)]
        assert inference.outbox.backlog() == 1000
        batches = [monitoring_pb2.PredictionColumns.FromString(r.record) for r in rows]
        assert [pid for b in batches for pid in b.prediction_ids] == [p.prediction_id for p in reply.predictions]
        assert [p for b in batches for p in b.probabilities] == [p.probability for p in reply.predictions]
        assert [c for b in batches for c in b.churn] == [p.churn for p in reply.predictions]
        assert all(b.model == reply.model and list(b.feature_names) == list(F.FEATURE_NAMES) for b in batches)
        logged = np.vstack([np.frombuffer(b.feature_values, dtype="<f8").reshape(-1, len(F.FEATURES))
                            for b in batches])
        expected, _ = F.customer_values(customers)
        np.testing.assert_array_equal(logged, expected)  # NaN where TotalCharges was blank
        assert np.isnan(logged[:, F.FEATURE_NAMES.index("total_charges")]).any()
        inference.outbox.acknowledge(rows)
        csv_body = frame.to_csv(index=False).encode()
        client.stub.PredictCsv(inference_pb2.PredictCsvRequest(csv=httpbody_pb2.HttpBody(
            content_type="text/csv", data=csv_body)), metadata=client.metadata())
        csv_batches = [monitoring_pb2.PredictionColumns.FromString(r.record) for r in inference.outbox.pending(10_000)]
        np.testing.assert_array_equal(np.vstack([np.frombuffer(b.feature_values, dtype="<f8").reshape(
            -1, len(F.FEATURES)) for b in csv_batches]), expected)
        assert [c for b in csv_batches for c in b.customer_ids] == frame.customerID.tolist()
    finally:
        client.close()
        inference.stop(0)
