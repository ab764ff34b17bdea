"""Wiring: one function builds the monitoring server from its parts, so `__main__` and the tests start it the same
way — tests inject a local token verifier, their own Envoy admin URL, port 0 and short intervals."""
from __future__ import annotations

import dataclasses
import logging

from churn.v1 import monitoring_pb2, monitoring_pb2_grpc

from services.common import identity, mlflow_config
from services.common.health import HEALTHZ_PATH, EnvoyView
from services.common.model_registry import ModelRegistry
from services.common.interceptor import ServiceInterceptor
from services.common.server import ServiceHost, start_server
from services.common.settings import Settings
from services.monitoring import metrics as M
from services.monitoring.auto_canary import AutoCanary
from services.monitoring.canary import SHADOW, CanaryControl, EnvoyAdmin
from services.monitoring.canary_analysis import CanaryAnalyzer, instance_error_rate
from services.monitoring.drift import DriftAnalyzer
from services.monitoring.drift_retrain import DriftRetrain
from services.monitoring.feedback import FeedbackService
from services.monitoring.lifecycle import Lifecycle
from services.monitoring.lifecycle_store import LifecycleStore
from services.monitoring.predictions import PredictionLog
from services.monitoring.reloader import InferenceReloader
from services.monitoring.retrain import Trainer
from services.monitoring.scheduler import Periodic
from services.monitoring.servicer import MonitoringParts, MonitoringServicer
from services.monitoring.store import MonitoringStore
from services.monitoring.versions import TrainingReferences

SERVICE_NAME = monitoring_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name
log = logging.getLogger("churn.monitoring")


def build_parts(settings: Settings, *, envoy_admin: str | None = None, database_url: str | None = None,
                runtime_data_dir=None, reload=None) -> MonitoringParts:
    """The domain objects; imports MLflow and Evidently now (seconds), never while serving a call.
    `runtime_data_dir` (default DATA_DIR) holds Envoy's disk runtime layer; tests give each Envoy its own.
    `reload(alias, token)` tells an inference instance to reload (default: its ReloadModel at the Settings address,
    with monitoring's own credential when `token` is empty)."""
    store = MonitoringStore(database_url or settings.monitoring_database_url)
    mlflow_config.quiet()
    registry = ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    drift = DriftAnalyzer(store, TrainingReferences(registry))
    # Envoy's admin listener is loopback-only, so monitoring runs beside the Envoy it controls.
    admin = EnvoyAdmin(envoy_admin or settings.envoy_admin_url)
    canary = CanaryControl(admin, runtime_data_dir or settings.data_dir, on_weight=M.CANARY_PERCENT.set)
    shadow = CanaryControl(admin, runtime_data_dir or settings.data_dir, on_weight=M.SHADOW_PERCENT.set, share=SHADOW)
    runs = LifecycleStore(store.engine)
    reload = reload or InferenceReloader(settings).reload
    trainer = Trainer(settings, store, runs, registry, reload)
    lifecycle = Lifecycle(registry, runs, reload, canary.set, shadow.set)
    analyzer = CanaryAnalyzer(store, registry, settings, instance_error_rate(settings))
    return MonitoringParts(
        settings=settings, store=store,
        predictions=PredictionLog(store, max_rows=settings.max_csv_rows),
        feedback=FeedbackService(store, max_bytes=settings.max_message_bytes, max_rows=settings.max_csv_rows),
        drift=drift, registry=registry, updater=M.MetricsUpdater(store, drift), canary=canary, shadow=shadow, runs=runs,
        lifecycle=lifecycle, trainer=trainer, analyzer=analyzer,
        auto_canary=AutoCanary(analyzer, registry, lifecycle, runs, settings.canary_auto_steps,
                               settings.canary_auto_promote),
        drift_retrain=DriftRetrain(trainer, registry, store, settings.drift_retrain_share, settings.drift_retrain_after))


@dataclasses.dataclass
class MonitoringApp:
    host: ServiceHost
    parts: MonitoringParts
    jobs: list[Periodic]

    @property
    def port(self) -> int:
        return self.host.port

    def stop(self, grace: float = 5.0) -> None:
        self.host.stop(grace)
        self.close()

    def close(self) -> None:
        for job in self.jobs:
            job.stop()
        self.parts.trainer.close()
        self.parts.store.close()


def start(settings: Settings, verifier: identity.TokenVerifier, *, parts: MonitoringParts | None = None,
          port: int | None = None, http_port: int | None = None, metrics_seconds: float | None = None,
          reconcile_seconds: float = 5.0) -> MonitoringApp:
    """Build (unless given), serve, and schedule the metrics refresh and the canary reconcile."""
    parts = parts or build_parts(settings)
    # The gateway's health backend: Health/Check for every churn.v1 service and /healthz, from Envoy's own view.
    view = EnvoyView(lambda: parts.canary.admin.url)
    parts.trainer.resume()
    host = start_server(
        settings, port=settings.monitoring_port if port is None else port,
        http_port=settings.monitoring_http_port if http_port is None else http_port,
        register=lambda server: monitoring_pb2_grpc.add_MonitoringServiceServicer_to_server(
            MonitoringServicer(parts), server),
        service_names=[SERVICE_NAME],
        interceptor=ServiceInterceptor.from_settings(verifier, settings),
        health_view=view, http_routes={HEALTHZ_PATH: view.healthz})
    jobs = [Periodic("metrics-update", metrics_seconds or settings.metrics_update_seconds,
                     lambda: parts.drift_retrain.observe(parts.updater.update()), first_delay=1.0).start()]
    if settings.canary_auto:
        jobs.append(Periodic("auto-canary", settings.canary_auto_interval_seconds, parts.auto_canary.tick,
                             first_delay=settings.canary_auto_interval_seconds).start())
    if reconcile_seconds > 0:
        jobs.append(Periodic("canary-reconcile", reconcile_seconds,
                             lambda: (parts.canary.reconcile(), parts.shadow.reconcile()), first_delay=0.5).start())
    return MonitoringApp(host, parts, jobs)
