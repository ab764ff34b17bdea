"""Monitoring fixtures: in-process servers on port 0 built exactly as `python -m services.monitoring` builds them
(`app.build_parts` + `app.start`), with a local token verifier, their own store and runtime folder, and the
session's trained registry; plus the registered versions' holdout rows and native models for realistic inputs."""
from __future__ import annotations

import dataclasses
import pathlib
import socket

import grpc
import pytest
from churn.v1 import common_pb2, monitoring_pb2, monitoring_pb2_grpc

from services.common import mlflow_config
from services.common import model_registry as R
from services.common.settings import Settings
from services.common.telco_csv import TelcoCsv, parse_telco_csv
from services.monitoring import app
from services.monitoring.store import PredictionBatch, PredictionRow
from tests import natives
from tests.tokens import LocalKeys

TELCO_CSV = pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv"


def batch_of(rows: list[PredictionRow]) -> PredictionBatch:
    """PredictionRows (the store's read-side shape) as the columns the store takes."""
    columns = {f.name: [getattr(r, f.name) for r in rows] for f in dataclasses.fields(PredictionBatch)
               if f.name != "inputs"}
    return PredictionBatch(inputs={name: [r.inputs[name] for r in rows] for name in rows[0].inputs}, **columns)


def free_port() -> int:
    """A loopback port nobody listens on (an 'Envoy admin' that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Client:
    """Stubs plus metadata for a role; `ops=True` sends the ops API key (needed on ops routes)."""

    def __init__(self, address: str, settings: Settings, keys: LocalKeys):
        self.channel = grpc.insecure_channel(address, options=settings.grpc_options())
        self.stub = monitoring_pb2_grpc.MonitoringServiceStub(self.channel)
        self._settings, self._keys = settings, keys

    def md(self, role: str = "admin", ops: bool = True):
        token = self._keys.mint(subject=f"test-{role}", role=role)  # fresh: session fixtures outlive a token's 5 min
        return [("authorization", f"Bearer {token}"),
                ("x-api-key", self._settings.ops_api_key if ops else self._settings.api_key)]

    def close(self) -> None:
        self.channel.close()


@dataclasses.dataclass
class Running:
    app: app.MonitoringApp
    client: Client

    @property
    def stub(self):
        return self.client.stub

    @property
    def md(self):
        return self.client.md

    @property
    def http_port(self) -> int:
        return self.app.host.http_port


def start_monitoring(settings: Settings, keys: LocalKeys, folder: pathlib.Path, *, envoy_admin: str | None = None,
                     database_url: str | None = None, reconcile_seconds: float = 0.0) -> Running:
    folder.mkdir(parents=True, exist_ok=True)
    parts = app.build_parts(settings, envoy_admin=envoy_admin or f"http://127.0.0.1:{free_port()}",
                            database_url=database_url or f"sqlite:///{folder / 'monitoring.db'}",
                            runtime_data_dir=folder)
    monitoring = app.start(settings, keys.verifier(), parts=parts, port=0, http_port=0, metrics_seconds=3600,
                           reconcile_seconds=reconcile_seconds)
    return Running(monitoring, Client(f"127.0.0.1:{monitoring.port}", settings, keys))


@pytest.fixture(scope="session")
def monitoring(settings, keys, tmp_path_factory):
    """The shared server (SQLite store, no Envoy): tests use distinct prediction ids and model versions."""
    running = start_monitoring(settings, keys, tmp_path_factory.mktemp("monitoring"))
    yield running
    running.client.close()
    running.app.stop(1)


@pytest.fixture
def fresh(settings, keys, tmp_path):
    """A server with an empty store, for tests about what an empty log answers."""
    running = start_monitoring(settings, keys, tmp_path / "fresh")
    yield running
    running.client.close()
    running.app.stop(1)


@dataclasses.dataclass
class Version:
    number: str
    root: pathlib.Path
    holdout: TelcoCsv

    def native(self):
        """(flavor, estimator), loaded by hand."""
        return natives.raw_native(self.root)


@pytest.fixture(scope="session")
def versions(settings, tmp_path_factory) -> dict[str, Version]:
    """{alias: Version} with each registered version's artifacts (holdout split, native model)."""
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    found = {}
    for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING):
        version, root = natives.download(registry, alias, tmp_path_factory.mktemp(alias))
        data = (root / R.REFERENCE_HOLDOUT).read_bytes()
        found[alias] = Version(str(version), root, parse_telco_csv(data, len(data) + 1, 10**6))
    return found


def records(customers, version: str, prefix: str, alias: str = "production", churn=None, probability=None,
            name: str = "churn-model") -> list[monitoring_pb2.PredictionRecord]:
    """PredictionRecords for customers (outcomes given, or a fixed dummy outcome)."""
    out = []
    for i, customer in enumerate(customers):
        p = 0.25 if probability is None else float(probability[i])
        out.append(monitoring_pb2.PredictionRecord(
            prediction_id=f"{prefix}-{i}", customer=customer, probability=p,
            churn=bool(p >= 0.5) if churn is None else bool(churn[i]),
            model=common_pb2.ModelRef(name=name, version=version, alias=alias), latency_ms=1.5,
            request_id=f"req-{prefix}"))
    return out


def service_md(running: Running):
    """RecordPredictions needs the service role (and a client key is enough)."""
    return running.md(role="service", ops=False)
