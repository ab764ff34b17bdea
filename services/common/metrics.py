"""Metrics every server shares (prefix `churn_`), and the HTTP side port that serves them.

Service-specific metrics live in each service's own metrics module with the same prefix. The side port also
carries plain-HTTP routes a gRPC server cannot answer (auth's JWKS, which Envoy fetches by GET).
"""
from __future__ import annotations

import socketserver
import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, make_wsgi_app

# `traffic` is "live" for callers' requests and "shadow" for the copies Envoy mirrors to staging (never answered to
# anyone): callers' figures select traffic="live".
GRPC_REQUESTS = Counter("churn_grpc_requests_total", "RPCs handled, by final status code and traffic (live/shadow).",
                        ["service", "method", "code", "traffic"])
GRPC_LATENCY = Histogram("churn_grpc_request_seconds", "RPC handling time.", ["service", "method", "traffic"],
                         buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# path -> () -> (status line, content type, body)
HttpRoute = Callable[[], tuple[str, str, bytes]]


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes every few seconds are not worth a log line
        pass


class SideHttpServer:
    """`/metrics` plus extra GET routes on one plain-HTTP port (0 = ephemeral)."""

    def __init__(self, host: str, port: int, routes: dict[str, HttpRoute] | None = None,
                 registry: CollectorRegistry = REGISTRY):
        metrics_app = make_wsgi_app(registry)
        extra = dict(routes or {})

        def app(environ, start_response):
            route = extra.get(environ.get("PATH_INFO", ""))
            if route is None:
                return metrics_app(environ, start_response)
            status, content_type, body = route()
            start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                    ("Cache-Control", "no-store")])
            return [body]

        self._server = make_server(host, port, app, _ThreadingWSGIServer, handler_class=_QuietHandler)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-side", daemon=True)

    def start(self) -> "SideHttpServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
