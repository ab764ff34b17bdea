"""Issue 10's one row format: inference's outbox keeps a request's predictions as one PredictionColumns (field
values as a float64 matrix) and monitoring stores it column by column. The old format (one PredictionRecord per
prediction) still arrives from outboxes written before the upgrade and must store exactly the same rows; a bad row of
a columnar batch is dead-lettered on its own, the rest stored."""
from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest
from churn.v1 import common_pb2, monitoring_pb2

from services.common import features as F
from services.common import prediction_record
from services.inference.outbox import Entry, Outbox
from services.inference.shipper import MonitoringSink, ServiceToken, Shipper
from services.monitoring.predictions import PredictionLog
from services.monitoring.store import MonitoringStore, PredictionFilter
from tests.monitoring.conftest import records, service_md, start_monitoring

M = monitoring_pb2
MODEL = common_pb2.ModelRef(name="churn-model", version="1", alias="production")
# The outbox as the release before the columnar format created it.
OLD_OUTBOX_SCHEMA = """
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, prediction_id TEXT NOT NULL UNIQUE, record BLOB NOT NULL,
                     created_at REAL NOT NULL);
CREATE TABLE set_aside (seq INTEGER PRIMARY KEY, prediction_id TEXT NOT NULL, record BLOB NOT NULL,
                        reason TEXT NOT NULL, set_aside_at REAL NOT NULL);
"""


def columns(customers, prefix: str, probability: float = 0.25) -> list[monitoring_pb2.PredictionColumns]:
    """What the predictor commits for these customers (records of at most RECORD_ROWS rows)."""
    values, _ = F.customer_values(customers)
    n = len(customers)
    return prediction_record.columns_messages(
        [f"{prefix}-{i}" for i in range(n)], [c.customer_id for c in customers], np.full(n, probability),
        np.zeros(n, dtype=bool), values, model=MODEL, latency_ms=1.5, predicted_at=prediction_record.timestamp(0),
        request_id=f"req-{prefix}")


def with_blank_total(customers):
    """The customers, the third one without total_charges (the blank-TotalCharges rule: stored as absent)."""
    out = [common_pb2.Customer() for _ in customers]
    for copy, customer in zip(out, customers):
        copy.CopyFrom(customer)
    out[2].ClearField("total_charges")
    return out


def stored_inputs(store: MonitoringStore, prefix: str, n: int) -> list[tuple]:
    rows = {r.row.prediction_id: r.row for r in store.list_predictions(PredictionFilter(), 10_000)}
    return [(rows[f"{prefix}-{i}"].customer_id, rows[f"{prefix}-{i}"].inputs, rows[f"{prefix}-{i}"].probability,
             rows[f"{prefix}-{i}"].model_version, rows[f"{prefix}-{i}"].request_id) for i in range(n)]


def test_old_records_and_columns_store_the_same_rows(tmp_path, versions):
    customers = with_blank_total(versions["production"].holdout.customers()[:700])
    store = MonitoringStore(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        log = PredictionLog(store, max_rows=10_000)
        batches = columns(customers, "new")
        assert [len(b.prediction_ids) for b in batches] == [500, 200]
        assert log.record([], batches).inserted == 700
        old = records(customers, "1", "old")
        for record in old:
            record.request_id = "req-new"
        assert log.record(old).inserted == 700
        new_rows, old_rows = stored_inputs(store, "new", 700), stored_inputs(store, "old", 700)
        assert new_rows == old_rows
        assert new_rows[2][1]["total_charges"] is None and new_rows[0][1]["contract"] in {
            "Month-to-month", "One year", "Two year"}
        assert log.record(old[:3], columns(customers[:3], "new")).duplicates == 6  # both formats in one request
        mirrored = prediction_record.columns_messages(
            ["shadow-0"], [""], np.array([0.5]), np.array([True]), F.customer_values(customers[:1])[0], model=MODEL,
            latency_ms=1.0, predicted_at=prediction_record.timestamp(0), request_id="r", shadow=True)
        assert log.record([], mirrored).inserted == 1
        assert [r.row.shadow for r in store.list_predictions(PredictionFilter(shadow=True), 10)] == [True]
    finally:
        store.close()


def poison_rows(customers) -> tuple[monitoring_pb2.PredictionColumns, dict[int, str]]:
    """A 300-row batch with bad rows among good ones: {row: the field its dead letter must name}."""
    batch = columns(customers, f"cols-{time.monotonic_ns()}")[0]
    values = np.frombuffer(batch.feature_values, dtype="<f8").reshape(len(customers), -1).copy()
    bad = {7: "customer.customer_id", 40: "prediction_id", 81: "probability", 120: "customer.monthly_charges",
           150: "customer.contract", 199: "customer.partner", 230: "customer.tenure", 299: "customer.tenure"}
    batch.customer_ids[7] = "a\x00b"
    batch.prediction_ids[40] = ""
    batch.probabilities[81] = 1.5
    values[120, F.FEATURE_NAMES.index("monthly_charges")] = 1e39
    values[150, F.FEATURE_NAMES.index("contract")] = 2.5
    values[199, F.FEATURE_NAMES.index("partner")] = 2
    values[230, F.FEATURE_NAMES.index("tenure")] = 1.5
    values[299, F.FEATURE_NAMES.index("tenure")] = np.nan
    batch.feature_values = values.astype("<f8").tobytes()
    return batch, bad


def test_a_bad_row_of_a_columnar_batch_is_dead_lettered_alone(monitoring, versions):
    customers = versions["production"].holdout.customers()[:300]
    batch, bad = poison_rows(customers)
    malformed = columns(customers[:4], f"short-{time.monotonic_ns()}")[0]
    malformed.feature_values = malformed.feature_values[:-8]  # a byte count that is no rows x columns matrix
    store = monitoring.app.parts.store
    before = store.count_dead_letters()
    reply = monitoring.stub.RecordPredictions(M.RecordPredictionsRequest(batches=[batch, malformed]),
                                              metadata=service_md(monitoring), timeout=30)
    assert (reply.received, reply.inserted, reply.duplicates) == (304, 300 - len(bad), 0)
    letters = store.dead_letters(limit=len(bad) + 4)
    assert store.count_dead_letters() - before == len(bad) + 4
    named = {letter.field for letter in letters}
    assert named == {f"batches[0][{row}].{field}" for row, field in bad.items()} | {
        f"batches[1][{row}].feature_values" for row in range(4)}
    for letter in letters:  # each keeps its own row, as received
        row = M.PredictionColumns.FromString(letter.record)
        assert letter.kind == "columns" and len(row.prediction_ids) == 1 and row.prediction_ids[0] == \
            letter.prediction_id
    good = [pid for i, pid in enumerate(batch.prediction_ids) if i not in bad]
    assert store.existing_prediction_ids(good) == set(good)


@pytest.mark.parametrize("linger", [0.0, 0.05])
def test_an_outbox_from_before_the_upgrade_ships_beside_new_records(settings, keys, versions, tmp_path, linger):
    """An outbox file with the old schema and PredictionRecords in it, opened by this version: the old records and
    the columnar ones committed after the upgrade all reach monitoring; the backlog counts predictions."""
    customers = versions["production"].holdout.customers()[:600]
    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_OUTBOX_SCHEMA)
        old.executemany("INSERT INTO outbox (prediction_id, record, created_at) VALUES (?, ?, ?)",
                        [(r.prediction_id, r.SerializeToString(), 0.0) for r in records(customers[:50], "1", "before")])
    old.close()
    outbox = Outbox(path)
    assert outbox.backlog() == 50
    after = columns(customers, f"after-{linger}")
    outbox.append([Entry(b.prediction_ids[0], b.SerializeToString(), predictions=len(b.prediction_ids))
                   for b in after])
    assert outbox.backlog() == 650 and [r.predictions for r in outbox.pending(10_000)][-2:] == [500, 100]
    monitoring = start_monitoring(settings, keys, tmp_path / "monitoring")
    token = tmp_path / "service_token"
    token.write_text(keys.mint(subject="svc-inference", role="service", ttl=3600))
    shipper = Shipper(outbox, MonitoringSink(f"127.0.0.1:{monitoring.app.port}", ServiceToken("", token),
                                             settings.api_key, settings.grpc_options(), timeout=10),
                      batch_size=500, idle_wait=0.1, initial_backoff=0.05, max_backoff=0.3, linger=linger).start()
    try:
        deadline = time.monotonic() + 60
        while outbox.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.backlog() == 0
        ids = [f"before-{i}" for i in range(50)] + [pid for b in after for pid in b.prediction_ids]
        assert monitoring.app.parts.store.existing_prediction_ids(ids) == set(ids)
    finally:
        shipper.stop()
        outbox.close()
        monitoring.client.close()
        monitoring.app.stop(1)
