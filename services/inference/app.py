"""Wiring: one function builds the inference server from its parts, so `__main__` and the tests start it the same
way — tests take `build_parts` and replace single parts (a gated registry, a sink of their own, smaller limits,
port 0) with `dataclasses.replace`."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import threading
from typing import Any, Mapping

import grpc_predict_v2_pb2
import grpc_predict_v2_pb2_grpc
from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common import identity, mlflow_config
from services.common.interceptor import ServiceInterceptor
from services.common.model_registry import ModelRegistry
from services.common.server import ServiceHost, start_server
from services.common.settings import Settings
from services.inference.levers import Policy, RetentionAdvisor
from services.inference.model import ModelHolder, Registry
from services.inference.open_inference import OpenInference
from services.inference.open_inference_servicer import OpenInferenceServicer
from services.inference.outbox import Outbox
from services.inference.predictor import Limits, Predictor
from services.inference.servicer import InferenceServicer
from services.inference.workers import WorkerGroup
from services.inference.shipper import MonitoringSink, ServiceToken, Shipper, Sink

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name
OPEN_INFERENCE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def outbox_path(settings: Settings, alias: str, worker: int = 0) -> pathlib.Path:
    """One outbox file per serving process: per alias, and per worker after the first (replicas on other
    machines each have their own DATA_DIR). Worker 0 keeps the single-process name, so changing
    INFERENCE_WORKERS from 1 to N strands no rows; lowering it leaves the higher workers' files to a later start."""
    return settings.data_dir / (f"inference-{alias}-outbox.db" if worker == 0 else
                                f"inference-{alias}-w{worker}-outbox.db")


@dataclasses.dataclass(frozen=True)
class InferenceParts:
    """What one instance is made of: the alias it serves, where its model comes from, its limits, the retention
    policy, outbox file and ports, and where committed rows ship to (`sink` None: they stay in the outbox)."""

    alias: str
    registry: Registry
    limits: Limits
    retention: Policy
    outbox_file: pathlib.Path
    port: int
    http_port: int | None  # None: no side port (a worker whose parent serves /metrics)
    sink: Sink | None
    shipper_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # Shipper's batch size, backoff
    compiled_dir: pathlib.Path | None = None  # where compiled trees are cached; None serves the native model
    group: WorkerGroup | None = None  # the sibling workers sharing the port (services.inference.workers)


def build_parts(settings: Settings, alias: str | None = None, *, ship: bool = True) -> InferenceParts:
    """The parts `python -m services.inference` runs with, for `alias` (default MODEL_ALIAS): the MLflow
    registry, limits, retention policy (RETENTION_MOVES validated here, at start), outbox and ports from settings
    and, with `ship`, monitoring as the sink."""
    alias = alias or settings.model_alias
    mlflow_config.quiet()
    sink = MonitoringSink(settings.monitoring_address, ServiceToken.from_settings(settings), settings.api_key,
                          settings.grpc_options()) if ship else None
    # N workers with OpenMP threads each must not oversubscribe the cores (measured here under load: xgboost
    # on 2 threads took 30-150 ms for 1,000 rows, 2-12 ms on one).
    threads = max(1, (os.cpu_count() or 1) // settings.inference_workers)
    return InferenceParts(
        alias=alias, registry=ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name, threads),
        limits=Limits.from_settings(settings), retention=Policy.from_settings(settings),
        outbox_file=outbox_path(settings, alias), port=settings.inference_port(alias),
        http_port=settings.inference_http_port(alias), sink=sink,
        shipper_options={"linger": settings.outbox_linger_ms / 1000},
        compiled_dir=settings.compiled_cache_dir if settings.compile_models else None)


@dataclasses.dataclass
class InferenceApp:
    host: ServiceHost
    holder: ModelHolder
    outbox: Outbox
    shipper: Shipper | None
    loader: threading.Thread | None  # None when the model was loaded before serving (a pool worker)
    _stop_loading: threading.Event

    @property
    def port(self) -> int:
        return self.host.port

    def wait_loaded(self, timeout: float) -> bool:
        if self.loader is not None:
            self.loader.join(timeout)
        return self.holder.ready

    def stop(self, grace: float = 5.0) -> None:
        """NOT_SERVING, drain in-flight calls, then `close`."""
        self._stop_loading.set()
        self.host.stop(grace)
        self.close()

    def close(self) -> None:
        """After the server stopped: stop loading and shipping, close the outbox (unshipped rows stay for the
        next start)."""
        self._stop_loading.set()
        if self.shipper is not None:
            self.shipper.stop()
        self.outbox.close()


def start(settings: Settings, verifier: identity.TokenVerifier, parts: InferenceParts | None = None) -> InferenceApp:
    """Start serving (health NOT_SERVING); the model loads in the background and flips health to SERVING.

    A worker of a pool (`parts.group`) loads first and only then listens: the kernel spreads connections over every
    worker on the port, and one still loading would answer its share UNAVAILABLE."""
    parts = parts or build_parts(settings)
    holder = ModelHolder(parts.registry, parts.alias, parts.compiled_dir,
                         on_loaded=parts.group.loaded if parts.group is not None else None)
    outbox = Outbox(parts.outbox_file)
    predictor = Predictor(holder, outbox, parts.limits, siblings=parts.group)
    stop_loading = threading.Event()
    if parts.group is not None:
        holder.load_until_ready(stop_loading, lambda: None)

    def register(server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(predictor, RetentionAdvisor(holder, parts.retention)), server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            OpenInferenceServicer(OpenInference(predictor, holder, settings.model_name)), server)

    host = start_server(
        settings, port=parts.port, http_port=parts.http_port, register=register,
        service_names=[SERVICE_NAME, OPEN_INFERENCE_NAME],
        interceptor=ServiceInterceptor.from_settings(verifier, settings),
        serving=holder.ready, share_port=parts.group is not None)
    shipper = Shipper(outbox, parts.sink, **parts.shipper_options).start() if parts.sink is not None else None
    loader = None
    if not holder.ready:
        loader = threading.Thread(target=holder.load_until_ready, args=(stop_loading, lambda: host.set_serving(True)),
                                  name="model-loader", daemon=True)
        loader.start()
    return InferenceApp(host, holder, outbox, shipper, loader, stop_loading)
