"""Chaos on the running suite (issue 13): monitoring killed, then production killed with -9 while its outbox holds
every prediction made meanwhile; both restarted on their ports. Every row answered reaches monitoring (counted by
prediction id in monitoring's store), none twice — the outbox is the only copy while both are down."""
from __future__ import annotations

import concurrent.futures
import pathlib
import time

import grpc
import pytest
import sqlalchemy as sa
from churn.v1 import inference_pb2, inference_pb2_grpc

from services.inference.app import outbox_path
from services.inference.outbox import Outbox
from tests.harness import ServiceProcess

pytestmark = pytest.mark.integration
ROWS = 300  # answered while monitoring is down, then production is killed before it could ship any of them


def restart(suite, key: str, name: str, module: str, extra: dict[str, str]) -> None:
    old = suite.services[key]
    env = dict(old.env, **extra)
    env.pop("PORT_FILE", None)
    suite.services[key] = ServiceProcess(name, module, env, suite.workdir).wait_ready(120)


def logged(db: pathlib.Path, ids: list[str]) -> list[str]:
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as connection:
            found = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found += connection.execute(sa.text("select prediction_id from predictions where prediction_id in "
                                                    f"({','.join(':p%d' % i for i in range(len(chunk)))})"),
                                            {f"p{i}": v for i, v in enumerate(chunk)}).scalars().all()
        return found
    finally:
        engine.dispose()


def test_kill_9_of_production_with_a_full_outbox_loses_no_row(suite, customers):
    monitoring, production = suite.services["monitoring"], suite.services["production"]
    monitoring_ports = {"MONITORING_PORT": str(monitoring.port), "MONITORING_HTTP_PORT": str(monitoring.http_port)}
    monitoring.kill()
    stub = inference_pb2_grpc.InferenceServiceStub(grpc.insecure_channel(production.address))
    metadata = suite.md(suite.service_token)
    ids: list[str] = []
    try:
        def predict(i: int) -> str:
            return stub.Predict(inference_pb2.PredictRequest(customer=customers[i]), metadata=metadata,
                                timeout=30).prediction.prediction_id

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(predict, range(ROWS)))
        assert len(set(ids)) == ROWS
        production.kill()  # SIGKILL: no drain, no final ship; only the committed outbox rows survive
        held = Outbox(outbox_path(suite.settings, "production"))
        try:
            assert set(ids) <= {row.prediction_id for row in held.pending(10 * ROWS)}, "rows left before the kill"
        finally:
            held.close()
    finally:
        restart(suite, "production", "inference_production", "services.inference",
                {"INFERENCE_PRODUCTION_PORT": str(production.port)})
        restart(suite, "monitoring", "monitoring", "services.monitoring", monitoring_ports)
        suite.gateway.wait_healthy(["inference_production", "monitoring"], timeout=60)
    db = pathlib.Path(suite.settings.monitoring_database_url.removeprefix("sqlite:///"))
    deadline = time.monotonic() + 90
    while len(found := logged(db, ids)) < ROWS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(found) == ROWS and len(set(found)) == ROWS, f"{len(set(found))} of {ROWS} rows reached monitoring"
