"""ReloadModel under load: the alias moves in the registry, ReloadModel swaps the new version in while a thread pool
hammers Predict — zero failed requests, and the answers switch version.

Uses its own registered model (versions pointing at the session's trained artifacts), so moving its alias touches
nothing the other tests read."""
from __future__ import annotations

import dataclasses
import time
import uuid
from concurrent import futures

import grpc
import pandas as pd
import pytest
from churn.v1 import inference_pb2

from services.common import telco_csv
from tests import natives
from tests.inference.conftest import TELCO_CSV, Client, start_app

REQUESTS = 2000


@pytest.fixture(scope="module")
def reload_model(registry):
    """A fresh registered model: v1 = the production (xgboost) artifacts, v2 = the staging (sklearn) ones."""
    name = f"churn-reload-{uuid.uuid4().hex[:8]}"
    versions = natives.copy_model(registry, name)
    yield name, versions
    registry.client.delete_registered_model(name)


@pytest.fixture(scope="module")
def reloading(settings, keys, reload_model, tmp_path_factory):
    name, versions = reload_model
    inference = start_app(dataclasses.replace(settings, model_name=name), keys, tmp_path_factory.mktemp("reload"),
                          "production")
    caller = Client(f"127.0.0.1:{inference.port}", settings, keys)
    yield inference, caller, name, versions
    caller.close()
    inference.stop(1)


def test_reload_under_load_fails_nothing_and_switches_version(reloading, registry):
    inference, caller, name, (v1, v2) = reloading
    customers = telco_csv.frame_to_customers(pd.read_csv(TELCO_CSV, nrows=50).assign(
        TotalCharges=lambda f: pd.to_numeric(f.TotalCharges, errors="coerce")))
    metadata = caller.metadata()
    reloaded_at: list[float] = []

    def one(i: int):
        started = time.monotonic()
        try:
            reply = caller.stub.Predict(inference_pb2.PredictRequest(customer=customers[i % 50]), metadata=metadata,
                                        timeout=10)
            return started, reply.prediction.model.version, None
        except grpc.RpcError as error:
            return started, None, f"{error.code().name}: {error.details()}"

    def reload():
        registry.client.set_registered_model_alias(name, "production", v2)
        reply = caller.stub.ReloadModel(inference_pb2.ReloadModelRequest(alias="production"),
                                        metadata=caller.metadata("admin", ops=True))
        reloaded_at.append(time.monotonic())
        return reply

    # A third of the calls before the reload, calls in batches for as long as it runs, a third after it.
    with futures.ThreadPoolExecutor(6) as pool, futures.ThreadPoolExecutor(1) as control:
        results = list(pool.map(one, range(REQUESTS // 3)))
        reloader = control.submit(reload)
        while not reloader.done():
            results += pool.map(one, range(len(results), len(results) + 100))
        during = len(results) - REQUESTS // 3
        results += pool.map(one, range(len(results), len(results) + REQUESTS // 3))
        reply = reloader.result(timeout=120)

    assert during >= 100, "the reload finished before any call overlapped it"
    failures = [error for _, _, error in results if error]
    assert failures == [], failures[:5]
    versions = [version for _, version, _ in results]
    assert set(versions) == {v1, v2}
    assert versions.count(v1) >= REQUESTS // 4 and versions.count(v2) >= REQUESTS // 4
    assert all(version == v2 for started, version, _ in results if started > reloaded_at[0])
    assert (reply.previous.version, reply.current.version, reply.changed) == (v1, v2, True)
    again = caller.stub.ReloadModel(inference_pb2.ReloadModelRequest(), metadata=caller.metadata("admin", ops=True))
    assert (again.current.version, again.changed) == (v2, False)
    info = caller.stub.GetModelInfo(inference_pb2.GetModelInfoRequest(), metadata=caller.metadata())
    assert (info.model.version, info.flavor) == (v2, "sklearn")


def test_reload_needs_admin_and_the_ops_key_and_the_right_alias(reloading):
    _, caller, _, _ = reloading
    stub = caller.stub
    cases = [(caller.metadata("agent", ops=True), "production", grpc.StatusCode.PERMISSION_DENIED),
             (caller.metadata("admin", ops=False), "production", grpc.StatusCode.PERMISSION_DENIED),
             (caller.metadata("admin", ops=True), "staging", grpc.StatusCode.FAILED_PRECONDITION)]
    for metadata, alias, code in cases:
        with pytest.raises(grpc.RpcError) as error:
            stub.ReloadModel(inference_pb2.ReloadModelRequest(alias=alias), metadata=metadata)
        assert error.value.code() == code
