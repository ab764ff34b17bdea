"""grpc.health.v1 for every server: the library's servicer (statuses set by the code that knows), plus `List`, and
on the gateway's designated health backend (monitoring) answers for services in other processes from Envoy's own
view of its upstreams (its active health checks), so `grpc.health.v1.Health/Check {"service":
"churn.v1.InferenceService"}` through :8080 says what Envoy knows. `/healthz` is the same view as JSON.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Callable

from grpc_health.v1 import health, health_pb2

HEALTHZ_PATH = "/healthz"  # served by monitoring's HTTP side port, routed there by the gateway
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
# Envoy cluster -> the gRPC services it serves (staging answers no service name of its own: production does; the
# inference port also serves the Open Inference Protocol).
CLUSTER_SERVICES = {"auth": ("churn.v1.AuthService",), "monitoring": ("churn.v1.MonitoringService",),
                    "inference_production": ("churn.v1.InferenceService", "inference.GRPCInferenceService")}
REQUIRED_CLUSTERS = tuple(CLUSTER_SERVICES)  # the suite serves only with these; a dead canary falls back
VIEW_MAX_AGE_SECONDS = 1.0


def cluster_health(clusters: dict) -> dict[str, bool]:
    """Envoy's `/clusters?format=json` as {cluster: every host healthy} (aggregate clusters have no hosts)."""
    result: dict[str, bool] = {}
    for cluster in clusters.get("cluster_statuses", []):
        hosts = cluster.get("host_statuses", [])
        if not hosts:
            continue
        result[cluster["name"]] = all(
            host.get("health_status", {}).get("eds_health_status") in (None, "HEALTHY") and not any(
                value is True for key, value in host.get("health_status", {}).items() if key.startswith("failed"))
            for host in hosts)
    return result


class EnvoyView:
    """Envoy's upstream health from its admin listener (loopback), read at most once a second; an admin that does
    not answer means nothing is known to be healthy."""

    def __init__(self, admin_url: str | Callable[[], str], timeout: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self._admin_url = admin_url if callable(admin_url) else (lambda: admin_url)  # a function: asked each read
        self._timeout = timeout
        self._clock = clock
        self._cached: tuple[float, dict[str, bool]] | None = None
        self._lock = threading.Lock()

    def clusters(self) -> dict[str, bool]:
        with self._lock:
            if self._cached and self._clock() - self._cached[0] < VIEW_MAX_AGE_SECONDS:
                return self._cached[1]
            try:
                url = f"{self._admin_url().rstrip('/')}/clusters?format=json"
                with urllib.request.urlopen(url, timeout=self._timeout) as response:
                    view = cluster_health(json.loads(response.read()))
            except (OSError, ValueError):
                view = {}
            self._cached = (self._clock(), view)
            return view

    def healthz(self) -> tuple[str, str, bytes]:
        """The `/healthz` answer: 200 when every required upstream is healthy, else 503; per-upstream breakdown."""
        view = self.clusters()
        ok = all(view.get(name, False) for name in REQUIRED_CLUSTERS)
        body = {"status": "SERVING" if ok else "NOT_SERVING",
                "upstreams": {name: "HEALTHY" if healthy else "UNHEALTHY" for name, healthy in sorted(view.items())}}
        for name in REQUIRED_CLUSTERS:
            body["upstreams"].setdefault(name, "UNKNOWN")
        return ("200 OK" if ok else "503 Service Unavailable"), "application/json", json.dumps(body).encode()


class Health(health.HealthServicer):
    """The library's servicer plus List; with `view`, services not served here answer from Envoy's view."""

    def __init__(self, view: EnvoyView | None = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(experimental_non_blocking=True)
        self._view = view
        self._clock = clock
        self._checked = threading.Condition()
        self._checks, self._last_check = 0, float("-inf")

    def wait_until_seen(self, checks: int, timeout: float, watched_within: float = 1.5) -> bool:
        """After NOT_SERVING: keep serving until a health checker has asked `checks` more times (Envoy takes a
        host out after `unhealthy_threshold` = 2 failed checks, a second apart), at most `timeout` seconds. Why:
        grpc-python's stop() cancels the calls its transport has received but not yet handed to a handler, so a
        server must stop only once no new calls are routed to it. A server nobody checked within `watched_within`
        seconds is not behind a health checker: no wait. True when the checks were seen."""
        with self._checked:
            if self._clock() - self._last_check > watched_within:
                return False
            target, deadline = self._checks + checks, self._clock() + timeout
            while self._checks < target and (left := deadline - self._clock()) > 0:
                self._checked.wait(left)
            return self._checks >= target

    def _remote(self) -> dict[str, int]:
        if self._view is None:
            return {}
        clusters = self._view.clusters()
        return {service: SERVING if clusters.get(cluster) else NOT_SERVING
                for cluster, services in CLUSTER_SERVICES.items() for service in services}

    def Check(self, request, context):
        with self._checked:
            self._checks, self._last_check = self._checks + 1, self._clock()
            self._checked.notify_all()
        with self._lock:
            local = request.service in self._server_status
        remote = {} if local else self._remote()
        if request.service in remote:
            return health_pb2.HealthCheckResponse(status=remote[request.service])
        return super().Check(request, context)

    def List(self, request, context):
        with self._lock:
            local = dict(self._server_status)
        statuses = {**self._remote(), **local}
        return health_pb2.HealthListResponse(statuses={name: health_pb2.HealthCheckResponse(status=status)
                                                       for name, status in statuses.items()})
