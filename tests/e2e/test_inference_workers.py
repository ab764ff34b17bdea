"""INFERENCE_WORKERS=2: two processes serve one port, each with its own outbox; /metrics adds them up; a reload
through one worker reaches both before it answers; a killed worker is restarted; SIGTERM stops all."""
from __future__ import annotations

import os
import pathlib
import signal
import sqlite3
import time
import uuid

import grpc
import pytest
from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common import model_registry as R
from tests import natives
from tests.e2e.conftest import metric_total
from tests.harness import ServiceProcess

pytestmark = pytest.mark.integration
CALLS = 200


def children(pid: int) -> list[int]:
    """The worker processes of `pid` (spawned ones; not multiprocessing's resource tracker). A thread or a child may
    end while this reads /proc (grpc's and the outbox's threads come and go): what vanished is not counted."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        try:
            listed = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in listed:
            try:
                if b"spawn_main" in pathlib.Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def outbox_rows(path: pathlib.Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM outbox").fetchone()[0]


@pytest.fixture(scope="module")
def pool(suite, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("workers")
    registry = R.ModelRegistry(f"sqlite:///{suite.env['DATA_DIR']}/mlflow.db", suite.settings.model_name)
    name = f"churn-workers-{uuid.uuid4().hex[:8]}"
    versions = natives.copy_model(registry, name)
    env = dict(suite.env, MODEL_ALIAS="production", INFERENCE_WORKERS="2", MODEL_NAME=name, DATA_DIR=str(data_dir),
               MLFLOW_TRACKING_URI=f"sqlite:///{suite.env['DATA_DIR']}/mlflow.db", INFERENCE_PRODUCTION_PORT="0",
               INFERENCE_PRODUCTION_HTTP_PORT="0", SERVICE_TOKEN="not-shipping-in-this-test")
    process = ServiceProcess("inference-workers", "services.inference", env, data_dir).wait_ready(180)
    yield process, registry, name, versions, data_dir
    if process.process.poll() is None:
        process.stop()
    registry.client.delete_registered_model(name)


def predict_many(process, suite, customers, count: int) -> list[str]:
    """`count` Predict calls over eight channels, each with its own connection (SO_REUSEPORT spreads connections;
    channels to one target share one connection unless told otherwise)."""
    channels = [grpc.insecure_channel(process.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)]
    metadata = suite.md(suite.service_token)
    try:
        stubs = [inference_pb2_grpc.InferenceServiceStub(c) for c in channels]
        return [stubs[i % 8].Predict(inference_pb2.PredictRequest(customer=customers[i % 100]), metadata=metadata,
                                     timeout=10).prediction.model.version for i in range(count)]
    finally:
        for channel in channels:
            channel.close()


def test_two_workers_share_a_port_reload_together_restart_and_stop(pool, suite, customers):
    """One test, in this order: each step needs the state the one before left (random test order elsewhere)."""
    process, registry, name, versions, data_dir = pool
    # Both workers serve the port, each with its own outbox; /metrics adds them up.
    assert len(children(process.process.pid)) == 2
    before = metric_total(process.http_port, method="Predict", code="OK")
    assert predict_many(process, suite, customers, CALLS) == [versions[0]] * CALLS
    assert metric_total(process.http_port, method="Predict", code="OK") == before + CALLS
    per_worker = [outbox_rows(data_dir / file) for file in ("inference-production-outbox.db",
                                                            "inference-production-w1-outbox.db")]
    assert sum(per_worker) >= CALLS and min(per_worker) > 0, per_worker  # both processes answered

    # A reload through one worker has reached both when it answers.
    registry.client.set_registered_model_alias(name, "production", versions[1])
    with grpc.insecure_channel(process.address) as channel:
        reply = inference_pb2_grpc.InferenceServiceStub(channel).ReloadModel(
            inference_pb2.ReloadModelRequest(alias="production"), metadata=suite.md(suite.admin_token(), key="ops"),
            timeout=120)
    assert (reply.previous.version, reply.current.version, reply.changed) == (versions[0], versions[1], True)
    assert set(predict_many(process, suite, customers, 64)) == {versions[1]}

    # A killed worker is restarted; the survivor answers meanwhile; SIGTERM stops all.
    first, second = children(process.process.pid)
    os.kill(second, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        alive = children(process.process.pid)
        if len(alive) == 2 and second not in alive:
            break
        time.sleep(0.2)
    assert first in alive and len(alive) == 2 and second not in alive
    assert len(predict_many(process, suite, customers, 32)) == 32
    assert "worker died; restarting" in process.logs()
    assert process.stop() == 0
    assert not [pid for pid in (first, *alive) if pathlib.Path(f"/proc/{pid}").exists()]
