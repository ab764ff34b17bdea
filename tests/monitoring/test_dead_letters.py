"""Issue 13 item 11: one poison record must not stop prediction logging. Monitoring checks each record by the rules
it shares with inference (services/common/prediction_record.py); a record that breaks them, or that the database
itself refuses, goes to the dead-letter table with its reason and a metric, and every other row is stored."""
from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from churn.v1 import common_pb2, monitoring_pb2
from prometheus_client import REGISTRY

from services.common import prediction_record
from services.inference.outbox import RECORD, Entry, Outbox
from services.inference.shipper import MonitoringSink, ServiceToken, Shipper
from services.monitoring.predictions import PredictionLog
from services.monitoring.store import MonitoringStore
from tests.monitoring.conftest import records, service_md, start_monitoring
from tests.pg import own_database

M = monitoring_pb2
GOOD_ROWS = 300


def poison_records(customer) -> list[tuple[str, monitoring_pb2.PredictionRecord]]:
    """(field the record breaks, record); the first one is the record that jammed the log in the issue."""
    model = common_pb2.ModelRef(name="churn-model", version="1", alias="production")

    def record(**overrides):
        base = dict(prediction_id=f"poison-{len(overrides)}-{time.monotonic_ns()}", customer=customer,
                    probability=0.5, model=model)
        base.update(overrides)
        return M.PredictionRecord(**base)

    long_id = common_pb2.Customer()
    long_id.CopyFrom(customer)
    long_id.customer_id = "x" * 70_000
    nul_id = common_pb2.Customer()
    nul_id.CopyFrom(customer)
    nul_id.customer_id = "a\x00b"
    huge = common_pb2.Customer()
    huge.CopyFrom(customer)
    huge.monthly_charges = 1e39
    return [
        ("customer.customer_id", record(customer=long_id)),
        ("customer.customer_id", record(customer=nul_id)),
        ("prediction_id", record(prediction_id="")),
        ("probability", record(probability=1.5)),
        ("model.version", record(model=common_pb2.ModelRef(name="churn-model"))),
        ("customer.monthly_charges", record(customer=huge)),
    ]


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def own_postgres(request):
    """A database of this test's own on the run's PostgreSQL server (other tests count rows in the shared one)."""
    server = request.getfixturevalue("postgres_url")
    with own_database(server, f"{sa.engine.make_url(server).database}_dl") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    return request.getfixturevalue("own_postgres")


def test_poison_records_jam_nothing_and_every_good_row_is_delivered(settings, keys, versions, tmp_path, database_url):
    """The shipping path as in production: a real outbox holding good rows with poison rows between them, the real
    shipper, a real monitoring server on SQLite and on PostgreSQL. Every good row arrives (counted by id), each
    poison row lands in the dead-letter table naming its field, and the outbox empties."""
    customers = versions["production"].holdout.customers()[:GOOD_ROWS]
    good = records(customers, "1", f"good-{tmp_path.name}")
    poison = poison_records(customers[0])
    outbox = Outbox(tmp_path / "outbox.db")
    rows = [Entry(r.prediction_id, r.SerializeToString(), RECORD) for r in good]
    for k, (_, bad) in enumerate(poison):  # spread through the batches
        rows.insert(40 * k + 7, Entry(f"poison-slot-{k}", bad.SerializeToString(), RECORD))
    outbox.append(rows)
    monitoring = start_monitoring(settings, keys, tmp_path / "monitoring", database_url=database_url)
    token = tmp_path / "service_token"
    token.write_text(keys.mint(subject="svc-inference", role="service", ttl=3600))
    dead_before = counter("churn_monitoring_records_total", outcome="dead_letter")
    store = monitoring.app.parts.store
    letters_before, rows_before = store.count_dead_letters(), store.count_predictions()
    shipper = Shipper(outbox, MonitoringSink(f"127.0.0.1:{monitoring.app.port}", ServiceToken("", token),
                                             settings.api_key, settings.grpc_options(), timeout=10),
                      batch_size=50, idle_wait=0.1, initial_backoff=0.05, max_backoff=0.3).start()
    try:
        deadline = time.monotonic() + 60
        while outbox.backlog() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.backlog() == 0, "the outbox is jammed"
        stored = store.existing_prediction_ids(r.prediction_id for r in good)
        assert len(stored) == GOOD_ROWS and store.count_predictions() - rows_before == GOOD_ROWS
        assert store.count_dead_letters() - letters_before == len(poison)
        letters = store.dead_letters(limit=len(poison))
        named = sorted(letter.field.partition(".")[2] for letter in letters)
        assert named == sorted(field for field, _ in poison), named
        assert all(M.PredictionRecord.FromString(letter.record).ByteSize() for letter in letters)
        assert counter("churn_monitoring_records_total", outcome="dead_letter") - dead_before == len(poison)
    finally:
        shipper.stop()
        outbox.close()
        monitoring.client.close()
        monitoring.app.stop(1)


def test_a_batch_with_a_bad_record_answers_ok_and_names_it(monitoring, versions):
    """What used to refuse the whole batch (INVALID_ARGUMENT) now stores the rest and says nothing is lost:
    received counts every record, inserted the stored ones."""
    customers = versions["production"].holdout.customers()[:5]
    batch = records(customers, "1", f"mixed-{time.monotonic_ns()}")
    batch.insert(2, M.PredictionRecord(prediction_id=f"nomodel-{time.monotonic_ns()}", customer=customers[0],
                                       probability=0.5, model=common_pb2.ModelRef(name="m")))
    before = monitoring.app.parts.store.count_dead_letters()
    reply = monitoring.stub.RecordPredictions(M.RecordPredictionsRequest(records=batch),
                                              metadata=service_md(monitoring), timeout=30)
    assert (reply.received, reply.inserted, reply.duplicates) == (6, 5, 0)
    assert monitoring.app.parts.store.count_dead_letters() == before + 1
    assert monitoring.app.parts.store.dead_letters(1)[0].field == "records[2].model.version"


def test_what_the_database_refuses_is_split_out_of_its_batch(own_postgres, versions, monkeypatch):
    """A record the shared rules would miss but PostgreSQL refuses (here: the rules switched off, a 300-character
    customer id into a 128-character column): the batch is split until that record is alone, it is
    dead-lettered, the other 63 rows are stored."""
    monkeypatch.setattr(prediction_record, "check", lambda log: None)
    store = MonitoringStore(own_postgres)
    try:
        batch = records(versions["production"].holdout.customers()[:64], "1", f"split-{time.monotonic_ns()}")
        batch[37].customer.customer_id = "y" * 300
        result = PredictionLog(store, max_rows=1000).record(batch)
        assert (result.received, result.inserted, result.dead_lettered) == (64, 63, 1)
        letter = store.dead_letters(1)[0]
        assert letter.prediction_id == batch[37].prediction_id and "refused by the store" in letter.reason
    finally:
        store.close()
