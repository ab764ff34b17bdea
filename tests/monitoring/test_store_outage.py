"""The prediction store's PostgreSQL server restarted (issue 13): while it is gone, RecordPredictions answers
UNAVAILABLE — never INTERNAL — so the outbox shipper sends the batch again; once it is back the same monitoring
process stores every row once (the pool's pre-ping replaces the connections the restart cut)."""
from __future__ import annotations

import time

import grpc
import pytest
from churn.v1 import monitoring_pb2

from services.common.db import make_engine
from services.common.errors import NotReady
from tests.e2e.envoy_process import free_port
from tests.monitoring.conftest import records, service_md, start_monitoring


def test_an_unreachable_database_is_not_ready():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nothing")
    try:
        with pytest.raises(NotReady, match="store is unavailable"):
            engine.connect()
    finally:
        engine.dispose()


def test_recording_across_a_store_restart(settings, keys, versions, tmp_path, private_postgres):
    monitoring = start_monitoring(settings, keys, tmp_path / "monitoring", database_url=private_postgres.url)
    customers = versions["production"].holdout.customers()[:20]
    before = records(customers[:10], "1", f"before-{time.monotonic_ns()}")
    during = records(customers[10:], "1", f"during-{time.monotonic_ns()}")

    def send(batch):
        return monitoring.stub.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(records=batch),
                                                 metadata=service_md(monitoring), timeout=30)
    try:
        assert send(before).inserted == 10
        private_postgres.stop("fast")
        with pytest.raises(grpc.RpcError) as down:
            send(during)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE, down.value.details()
        private_postgres.start()
        reply = send(during + before)
        assert (reply.received, reply.inserted, reply.duplicates) == (20, 10, 10)
        assert monitoring.app.parts.store.count_predictions() == 20
    finally:
        monitoring.client.close()
        monitoring.app.stop(1)
