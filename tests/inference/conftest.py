"""Inference fixtures: in-process servers for both aliases on port 0 (local token verifier, tokens minted with the
test key), built over the session's trained registry exactly as `python -m services.inference` builds them."""
from __future__ import annotations

import dataclasses
import pathlib

import grpc
import pytest
from churn.v1 import inference_pb2_grpc

from services.common import mlflow_config
from services.common.settings import Settings
from services.inference import app
from services.common.model_registry import ModelRegistry
from tests.tokens import LocalKeys

ROOT = pathlib.Path(__file__).resolve().parents[2]
TELCO_CSV = ROOT / "data" / "telco_churn.csv"


@pytest.fixture(scope="session")
def registry(settings) -> ModelRegistry:
    return ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)


class Client:
    """A caller of one server: stubs plus metadata for a role (and the right API key for the route)."""

    def __init__(self, address: str, settings: Settings, keys: LocalKeys):
        self.channel = grpc.insecure_channel(address, options=settings.grpc_options())
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self._settings = settings
        self._keys = keys

    def metadata(self, role: str = "agent", ops: bool = False, request_id: str | None = None):
        token = self._keys.mint(subject=f"test-{role}", role=role)  # fresh: session fixtures outlive a token's 5 min
        md = [("authorization", f"Bearer {token}"),
              ("x-api-key", self._settings.ops_api_key if ops else self._settings.api_key)]
        if request_id:
            md.append(("x-request-id", request_id))
        return md

    def close(self) -> None:
        self.channel.close()


def start_app(settings: Settings, keys: LocalKeys, tmp: pathlib.Path, alias: str, **replaced) -> app.InferenceApp:
    """The parts `python -m services.inference` builds, on port 0 with the test's own outbox and nothing shipped;
    `replaced` swaps single parts (a sink of the test's own ships, smaller limits, another outbox file)."""
    replaced = {"port": 0, "http_port": 0, "outbox_file": tmp / f"outbox-{alias}.db", **replaced}
    parts = dataclasses.replace(app.build_parts(settings, alias, ship=False), **replaced)
    inference = app.start(settings, keys.verifier(), parts)
    assert inference.wait_loaded(120), f"{alias} model did not load"
    return inference


@pytest.fixture(scope="session")
def servers(settings, keys, tmp_path_factory):
    """{alias: (app, client)} for production (xgboost) and staging (sklearn), shared by the read-only tests."""
    tmp = tmp_path_factory.mktemp("inference")
    started = {}
    for alias in ("production", "staging"):
        inference = start_app(settings, keys, tmp, alias)
        started[alias] = (inference, Client(f"127.0.0.1:{inference.port}", settings, keys))
    yield started
    for inference, client in started.values():
        client.close()
        inference.stop(1)


@pytest.fixture(scope="session")
def production(servers) -> Client:
    return servers["production"][1]


@pytest.fixture
def small_settings(settings) -> Settings:
    return dataclasses.replace(settings, max_batch_rows=100, max_csv_rows=50)
