"""Wiring: one function builds the inference server from its parts, so `__main__` and the tests start it the same
way — tests inject a local token verifier, a test registry or sink, smaller limits and port 0."""
from __future__ import annotations

import dataclasses
import pathlib
import threading

from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common import identity, mlflow_config
from services.common.interceptor import ServiceInterceptor
from services.common.server import ServiceHost, start_server
from services.common.settings import Settings
from services.inference.model import MlflowRegistry, ModelHolder, Registry
from services.inference.outbox import Outbox
from services.inference.predictor import Limits, Predictor
from services.inference.servicer import InferenceServicer
from services.inference.shipper import MonitoringSink, ServiceToken, Shipper, Sink

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


def outbox_path(settings: Settings, alias: str) -> pathlib.Path:
    """One outbox file per instance (instances are per alias; replicas each have their own DATA_DIR)."""
    return settings.data_dir / f"inference-{alias}-outbox.db"


@dataclasses.dataclass
class InferenceApp:
    host: ServiceHost
    holder: ModelHolder
    outbox: Outbox
    shipper: Shipper | None
    loader: threading.Thread
    _stop_loading: threading.Event

    @property
    def port(self) -> int:
        return self.host.port

    def wait_loaded(self, timeout: float) -> bool:
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


def start(settings: Settings, verifier: identity.TokenVerifier, *, alias: str | None = None,
          registry: Registry | None = None, sink: Sink | None = None, ship: bool = True,
          limits: Limits | None = None, outbox_file: pathlib.Path | None = None,
          port: int | None = None, http_port: int | None = None, shipper_options: dict | None = None) -> InferenceApp:
    """Start serving (health NOT_SERVING); the model loads in the background and flips health to SERVING."""
    alias = alias or settings.model_alias
    registry = registry or MlflowRegistry(mlflow_config.tracking_uri(settings.data_dir), settings.model_name)
    holder = ModelHolder(registry, alias)
    outbox = Outbox(outbox_file or outbox_path(settings, alias))
    predictor = Predictor(holder, outbox, limits or Limits.from_settings(settings))
    host = start_server(
        settings, port=settings.inference_port(alias) if port is None else port,
        http_port=settings.inference_http_port(alias) if http_port is None else http_port,
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(
            InferenceServicer(predictor), server),
        service_names=[SERVICE_NAME],
        interceptor=ServiceInterceptor(verifier, settings.api_key, settings.ops_api_key),
        serving=False)
    shipper = None
    if ship:
        sink = sink or MonitoringSink(settings.monitoring_address, ServiceToken.from_env(settings.secrets_dir),
                                      settings.api_key, settings.grpc_options())
        shipper = Shipper(outbox, sink, **(shipper_options or {})).start()
    stop_loading = threading.Event()
    loader = threading.Thread(target=holder.load_until_ready, args=(stop_loading, lambda: host.set_serving(True)),
                              name="model-loader", daemon=True)
    loader.start()
    return InferenceApp(host, holder, outbox, shipper, loader, stop_loading)
