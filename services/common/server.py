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
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.interceptor import ServiceInterceptor
from services.common.metrics import HttpRoute, SideHttpServer
from services.common.settings import Settings

log = logging.getLogger("churn.server")


@dataclasses.dataclass
class ServiceHost:
    server: grpc.Server
    port: int
    http: SideHttpServer
    health: health.HealthServicer
    service_names: list[str]

    @property
    def http_port(self) -> int:
        return self.http.port

    def set_serving(self, serving: bool) -> None:
        """Health for "" and every service name: SERVING only when the code that knows says so."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace: float = 5.0) -> None:
        self.set_serving(False)
        self.server.stop(grace).wait()
        self.http.stop()


def start_server(
    settings: Settings,
    *,
    port: int,
    http_port: int,
    register: Callable[[grpc.Server], None],
    service_names: Iterable[str],
    interceptor: ServiceInterceptor,
    reflect: Iterable[str] = (),
    http_routes: dict[str, HttpRoute] | None = None,
    serving: bool = True,
    max_workers: int = 32,
) -> ServiceHost:
    """Build, bind and start a server. `register` adds the servicers; `reflect` adds extra service names to
    reflection (the gateway's designated backend reflects every churn.v1 service)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         interceptors=[interceptor], options=settings.grpc_options())
    register(server)
    names = list(service_names)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflected = dict.fromkeys([*names, *reflect, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                               reflection.SERVICE_NAME])
    reflection.enable_server_reflection(list(reflected), server)
    bound = server.add_insecure_port(f"{settings.bind_host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind {settings.bind_host}:{port}")
    http = SideHttpServer(settings.bind_host, http_port, http_routes).start()
    server.start()
    host = ServiceHost(server=server, port=bound, http=http, health=health_servicer, service_names=names)
    host.set_serving(serving)
    _write_port_file(host, settings.port_file)
    log.info("listening", extra={"fields": {"grpc_port": bound, "http_port": http.port, "services": names}})
    return host


def _write_port_file(host: ServiceHost, target: str) -> None:
    """Tests and the process runner start servers on port 0 and read the bound ports from PORT_FILE."""
    if not target:
        return
    path = pathlib.Path(target)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"grpc": host.port, "http": host.http_port}))
    tmp.replace(path)


def serve_until_signalled(host: ServiceHost, grace: float = 10.0, on_stop: Callable[[], None] | None = None) -> None:
    """Block until SIGTERM/SIGINT, then drain: NOT_SERVING, stop accepting, let in-flight calls finish.

    Everything imported and built by now (MLflow, Evidently, pandas, the servicers) is moved out of the garbage
    collector's reach (`gc.freeze`): full collections while serving skip it, and so does the interpreter's last
    collection at exit, which otherwise took 5-6 s on a loaded machine here, past a process runner's kill timeout."""
    gc.freeze()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping", extra={"fields": {"grace_seconds": grace}})
    host.stop(grace)
    if on_stop is not None:
        on_stop()
    log.info("stopped")
