"""Issue 11's cheaper ingest, held to what it replaced: a request's PredictionColumns are read all at once (not one
LogColumns per batch), and rows reach the database through the driver's executemany of a once-compiled insert (not
SQLAlchemy's per-row binding). The rows, their names in errors, their dead-letter copies and what the database holds
must be exactly what the per-batch reading and a Core insert give, on both backends."""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
import sqlalchemy as sa
from churn.v1 import common_pb2, monitoring_pb2

from services.common import features as F
from services.common import prediction_record as PR
from services.monitoring import store as store_module
from services.monitoring.store import MonitoringStore, PredictionBatch, predictions
from tests.monitoring.test_store import rows_from, store, telco  # noqa: F401 - fixtures
from tests.monitoring.conftest import batch_of

MODEL = common_pb2.ModelRef(name="churn-model", version="7", alias="staging")
T0 = 1_764_547_200


def batch(customers, prefix: str, *, names=None, seconds=T0, nanos=0, shadow=False, latency=1.5,
          timed=True) -> monitoring_pb2.PredictionColumns:
    """A PredictionColumns as inference writes it; `names`: the feature columns in another writer's layout."""
    values = F.customer_values(customers)[0]
    n = len(customers)
    out = monitoring_pb2.PredictionColumns(
        prediction_ids=[f"{prefix}-{i}" for i in range(n)], customer_ids=[c.customer_id for c in customers],
        probabilities=[0.1 * (i + 1) for i in range(n)], churn=[i % 2 == 0 for i in range(n)], model=MODEL,
        latency_ms=latency, request_id=f"req-{prefix}", shadow=shadow)
    if timed:
        out.predicted_at.seconds, out.predicted_at.nanos = seconds, nanos
    names = names or list(F.FEATURE_NAMES)
    columns = [values[:, F.FEATURE_NAMES.index(name)] if name in F.FEATURE_NAMES else np.full(n, 3.0)
               for name in names]
    out.feature_names.extend(names)
    out.feature_values = np.column_stack(columns).astype("<f8").tobytes() if n else b""
    return out


def test_a_request_of_mixed_batches_reads_row_by_row_as_each_batch_says(versions):
    customers = versions["production"].holdout.customers()[:4]
    values = F.customer_values(customers)[0]
    permuted = ["extra_field", *reversed([n for n in F.FEATURE_NAMES if n != "total_charges"])]
    short_bytes = batch(customers[:2], "short")
    short_bytes.feature_values = short_bytes.feature_values[:-8]
    uneven = batch(customers[:1], "uneven")
    uneven.probabilities.append(0.5)
    repeated = batch(customers[:1], "repeat", names=[*F.FEATURE_NAMES[:-1], F.FEATURE_NAMES[0]])
    batches = [batch(customers[:3], "std", nanos=123_456_789), batch([], "empty"),
               batch(customers[3:4], "byname", names=permuted, latency=9.0), short_bytes, uneven, repeated,
               batch(customers[:2], "badtime", nanos=-5), batch(customers[1:2], "untimed", shadow=True, timed=False)]
    log = PR.from_batches(batches)
    place = [(0, 0), (0, 1), (0, 2), (2, 0), (3, 0), (3, 1), (4, 0), (5, 0), (6, 0), (6, 1), (7, 0)]
    assert len(log) == len(place) and log.absent is None
    assert log.prediction_ids == [batches[k].prediction_ids[j] for k, j in place]
    assert [log.where(i) for i in range(len(place))] == [f"batches[{k}][{j}]" for k, j in place]
    assert [log.source(i) for i in range(len(place))] == [
        ("columns", PR.row_of(batches[k], j).SerializeToString()) for k, j in place]
    malformed = {4, 5, 6, 7}  # rows of the three malformed batches: no values, no outcome read
    assert log.customer_ids == ["" if i in malformed else batches[k].customer_ids[j] for i, (k, j) in enumerate(place)]
    assert log.probabilities.tolist() == [0.0 if i in malformed else batches[k].probabilities[j]
                                          for i, (k, j) in enumerate(place)]
    assert log.churn.tolist() == [False if i in malformed else batches[k].churn[j] for i, (k, j) in enumerate(place)]
    by_name = values[3].copy()
    by_name[F.FEATURE_NAMES.index("total_charges")] = np.nan  # the writer did not send it: absent
    expected = np.vstack([values[:3], by_name, np.full((4, len(F.FEATURES)), np.nan), values[:2], values[1:2]])
    np.testing.assert_array_equal(log.values, expected)
    assert log.model_names == ["churn-model"] * 11 and log.model_versions == ["7"] * 11
    assert log.model_aliases == ["staging"] * 11 and log.request_ids == [f"req-{batches[k].prediction_ids[0][:-2]}"
                                                                         for k, _ in place]
    assert log.latency_ms.tolist() == [9.0 if k == 2 else 1.5 for k, _ in place]
    assert log.shadow == [k == 7 for k, _ in place]
    stamp = dt.datetime.fromtimestamp(T0, dt.timezone.utc)
    assert log.predicted_at == [stamp + dt.timedelta(microseconds=123_456)] * 3 + [stamp] * 5 + [None] * 3
    bad_time = "is not a valid timestamp (years 1-9999, nanos 0-999,999,999)"
    assert log.problems == {
        4: ("batches[3][0].feature_values", "holds 296 bytes, not rows x feature_names x 8"),
        5: ("batches[3][1].feature_values", "holds 296 bytes, not rows x feature_names x 8"),
        6: ("batches[4][0].prediction_ids",
            "customer_ids, probabilities and churn must have one entry per prediction id"),
        7: ("batches[5][0].feature_names", "must not repeat a name"),
        8: ("batches[6][0].predicted_at", bad_time), 9: ("batches[6][1].predicted_at", bad_time)}


def test_records_and_batches_in_one_request_keep_their_names(versions):
    customers = versions["production"].holdout.customers()[:3]
    record = monitoring_pb2.PredictionRecord(prediction_id="old-0", customer=customers[0], probability=0.2,
                                             model=MODEL)
    log = PR.joined([PR.from_records([record, record]), PR.from_batches([batch(customers[1:], "new")])])
    assert [log.where(i) for i in range(4)] == ["records[0]", "records[1]", "batches[0][0]", "batches[0][1]"]
    assert log.source(1) == ("record", record.SerializeToString())
    assert log.source(3)[1] == PR.row_of(batch(customers[1:], "new"), 1).SerializeToString()


def raw_rows(store: MonitoringStore, prefix: str) -> list[tuple]:
    """The rows as the database holds them (SQLite's datetimes as the text it stores), seq and id left out."""
    names = [c.name for c in predictions.columns if c.name not in ("seq", "prediction_id")]
    with store.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(  # text(): the driver's values, unconverted
            f"SELECT {', '.join(names)} FROM predictions WHERE prediction_id LIKE :prefix ORDER BY prediction_id"),
            {"prefix": f"{prefix}%"})]


def test_rows_are_stored_as_a_core_insert_stores_them(store, telco, monkeypatch):  # noqa: F811
    """The driver-level insert binds each type as SQLAlchemy does on that database: the same stored values
    (SQLite's datetime text included), absent inputs as NULL, booleans, microseconds, shadow rows."""
    recorded = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone.utc)
    monkeypatch.setattr(store_module, "utcnow", lambda: recorded)
    rows = rows_from(telco, 480, 40)  # TotalCharges is blank in some of the Telco rows around here
    rows = [dataclasses.replace(r, shadow=i % 4 == 0, customer_id="" if i == 3 else r.customer_id,
                                predicted_at=r.predicted_at + dt.timedelta(microseconds=7 * i))
            for i, r in enumerate(rows)]
    assert any(r.inputs["total_charges"] is None for r in rows)
    assert store.record_predictions(batch_of([dataclasses.replace(r, prediction_id=f"fast-{i:03}")
                                              for i, r in enumerate(rows)])) == 40
    core = batch_of([dataclasses.replace(r, prediction_id=f"core-{i:03}") for i, r in enumerate(rows)])
    columns = {f.name: getattr(core, f.name) for f in dataclasses.fields(PredictionBatch) if f.name != "inputs"}
    columns.update(core.inputs, recorded_at=[recorded] * len(core))
    with store.engine.begin() as connection:
        connection.execute(sa.insert(predictions), [dict(zip(columns, row)) for row in zip(*columns.values())])
    assert raw_rows(store, "fast-") == raw_rows(store, "core-")
    assert len(raw_rows(store, "fast-")) == 40


def test_new_rows_are_counted_exactly_with_duplicates_inside_and_across_calls(store, telco):  # noqa: F811
    rows = rows_from(telco, 0, 6, prefix="dup")
    assert store.record_predictions(batch_of(rows[:3])) == 3
    again = [rows[4], rows[1], rows[4], rows[5], rows[2], rows[5], rows[3]]  # 3 new, each new one twice
    assert store.record_predictions(batch_of(again)) == 3
    assert store.count_predictions() == 6
    assert store.existing_prediction_ids([r.prediction_id for r in rows]) == {r.prediction_id for r in rows}
