"""One bootstrap for every gRPC server: interceptor, health, reflection, metrics side port, port file, and a
graceful SIGTERM (health NOT_SERVING first, then in-flight calls get `grace` seconds to finish).

`start_server` returns a `ServiceHost` whose ports are the real bound ones, so tests bind port 0.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import pathlib
import signal
import threading
from concurrent import futures
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.db import private_folder
from services.common.health import EnvoyView, Health
from services.common.interceptor import ServiceInterceptor
from services.common.metrics import HttpRoute, SideHttpServer
from services.common.settings import Settings

log = logging.getLogger("churn.server")
# NOT_SERVING answers a health checker must have given before the server stops accepting calls: Envoy's
# unhealthy_threshold (2, gateway/clusters.py) and one more, so its last in-flight routing decisions have landed.
DRAIN_HEALTH_CHECKS = 3


@dataclasses.dataclass
class ServiceHost:
    server: grpc.Server
    port: int
    http: SideHttpServer | None  # None in a worker process: its parent serves /metrics for all workers
    health: Health
    service_names: list[str]

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    def set_serving(self, serving: bool) -> None:
        """Health for "" and every service name: SERVING only when the code that knows says so."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()
        if self.http is not None:
            self.http.stop()


def start_server(
    settings: Settings,
    *,
    port: int,
    http_port: int | None,
    register: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    interceptor: ServiceInterceptor,
    reflect: Iterable[str] = (),
    http_routes: dict[str, HttpRoute] | None = None,
    serving: bool = True,
    max_workers: int = 32,
    health_view: EnvoyView | None = None,
    share_port: bool = False,
) -> ServiceHost:
    """Build, bind and start a server. `register` adds the servicers; `reflect` adds extra service names to
    reflection (the gateway's designated backend reflects every churn.v1 service); `health_view` makes this the
    gateway's health backend (services.common.health). Only `share_port` servers (the inference worker pool) bind
    with SO_REUSEPORT, grpc-python's default: with it, a second server given a port another SO_REUSEPORT socket of
    the same user listens on (Envoy's listener, a stale instance) binds it too and silently takes part of its
    connections; without it, that bind fails."""
    private_folder(settings.data_dir)  # stores, outboxes and the registry live below it
    previous = reported_ports(settings)
    port = port or previous.get("grpc") or 0
    if http_port == 0:
        http_port = previous.get("http") or 0
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         interceptors=[interceptor],
                         options=[*settings.grpc_options(), ("grpc.so_reuseport", int(share_port))])
    register(server)
    names = list(service_names)
    health_servicer = Health(health_view)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflected = dict.fromkeys([*names, *reflect, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                               reflection.SERVICE_NAME])
    reflection.enable_server_reflection(list(reflected), server)
    try:
        bound = server.add_insecure_port(f"{settings.bind_host}:{port}")
    except RuntimeError:  # grpc-python raises where it used to return 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot bind {settings.bind_host}:{port}")
    http = SideHttpServer(settings.bind_host, http_port, http_routes).start() if http_port is not None else None
    server.start()
    host = ServiceHost(server=server, port=bound, http=http, health=health_servicer, service_names=names)
    host.set_serving(serving)
    write_port_file(settings.port_file, host.port, host.http_port)
    log.info("listening", extra={"fields": {"grpc_port": bound, "http_port": host.http_port, "services": names}})
    return host


def reported_ports(settings: Settings) -> dict:
    """Under `make run` (PORTS_DIR set) the ports this process's first start reported in its PORT_FILE: when
    supervisord restarts it, it binds them again, because Envoy's config and its peers name them (the runner
    clears PORTS_DIR before each `make run`, so a first start binds port 0 afresh)."""
    if settings.ports_dir is None or not settings.port_file:
        return {}
    try:
        return json.loads(pathlib.Path(settings.port_file).read_text())
    except (OSError, ValueError):
        return {}


def write_port_file(target: str, grpc_port: int, http_port: int | None, **more: int) -> None:
    """Tests and the process runner start servers on port 0 and read the bound ports from PORT_FILE."""
    if not target:
        return
    path = pathlib.Path(target)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": grpc_port, "http": http_port, **more}))
    tmp.replace(path)


def serve_until_signalled(host: ServiceHost, settings: Settings, on_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM/SIGINT, then drain: NOT_SERVING, serve on until the health checker has seen it (at most
    `shutdown_drain_seconds`), stop accepting, let in-flight calls finish (`shutdown_grace_seconds`).

    Everything imported and built by now (MLflow, Evidently, pandas, the servicers) is moved out of the garbage
    collector's reach (`gc.freeze`): full collections while serving skip it, and so does the interpreter's last
    collection at exit, which otherwise took 5-6 s on a loaded machine here, past a process runner's kill timeout."""
    gc.freeze()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1):  # a bounded wait: the handler's wake-up is never left to a blocked lock acquire
        pass
    host.set_serving(False)
    seen = host.health.wait_until_seen(DRAIN_HEALTH_CHECKS, settings.shutdown_drain_seconds)
    log.info("stopping", extra={"fields": {"grace_seconds": settings.shutdown_grace_seconds,
                                           "health_checker_saw_not_serving": seen}})
    host.stop(settings.shutdown_grace_seconds)
    if on_stop is not None:
        on_stop()
    log.info("stopped")
