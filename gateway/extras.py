"""Listeners and routes beside the API that `render()` adds in one call (`extend`).

The stats listener: Envoy's admin can change runtime and stop Envoy, so it stays on loopback; a scraper in another
container (Prometheus in docker-compose or Kubernetes) reads `/stats/prometheus` from a listener of its own that
routes that one path to the admin and answers 404 to everything else. Off unless ENVOY_STATS_PORT is set.
"""
from __future__ import annotations

from gateway.names import DESCRIPTOR_SET, FILTER, disabled, typed
from services.common.settings import Settings

STATS_LISTENER = "stats"
STATS_PATH = "/stats/prometheus"
ADMIN_CLUSTER = "envoy_admin"

DOCS_DIR = DESCRIPTOR_SET.parent / "openapi"
# path -> (file under DOCS_DIR, content type)
DOCS = {"/docs": ("index.html", "text/html; charset=utf-8"),
        "/docs/openapi.json": ("churn.swagger.json", "application/json"),
        "/docs/swagger-ui-bundle.js": ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        "/docs/swagger-ui.css": ("swagger-ui.css", "text/css; charset=utf-8")}
MAX_DOCS_BYTES = 8 * 1024 * 1024  # Envoy's direct responses default to 4 KiB; Swagger UI's bundle is ~1.7 MB
# The docs are static files: no key, no token, and no transcoder (it refuses every path no RPC maps: 404).
PUBLIC = {FILTER["api_key_auth"]: disabled(), FILTER["grpc_json_transcoder"]: disabled(),
          FILTER["jwt_authn"]: typed("type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
                                     disabled=True),
          FILTER["rbac"]: typed("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
                                rbac={"rules": {"action": "ALLOW", "policies": {"public": {
                                    "permissions": [{"any": True}], "principals": [{"any": True}]}}}})}


def _docs_routes() -> list[dict]:
    get = [{"name": ":method", "string_match": {"exact": "GET"}}]
    if not all((DOCS_DIR / name).exists() for name, _ in DOCS.values()):
        return [{"name": "docs_not_built", "match": {"prefix": "/docs", "headers": get},
                 "direct_response": {"status": 503, "body": {
                     "inline_string": "API docs not built: run make docs"}},  # made JSON like every error
                 "typed_per_filter_config": PUBLIC}]
    return [{"name": "docs" + path.removeprefix("/docs").replace("/", "_").replace(".", "_"),
             "match": {"path": path, "headers": get},
             "direct_response": {"status": 200, "body": {"filename": str(DOCS_DIR / name)}},
             "response_headers_to_add": [_header("content-type", content_type),
                                         _header("cache-control", "no-cache")],
             "typed_per_filter_config": PUBLIC}
            for path, (name, content_type) in DOCS.items()]


def _header(key: str, value: str) -> dict:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _stats_listener(settings: Settings) -> dict:
    hcm = typed(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix=STATS_LISTENER,
        route_config={"name": STATS_LISTENER, "virtual_hosts": [{
            "name": STATS_LISTENER, "domains": ["*"],
            "routes": [
                {"name": "prometheus_stats", "match": {"path": STATS_PATH, "headers": [
                    {"name": ":method", "string_match": {"exact": "GET"}}]},
                 "route": {"cluster": ADMIN_CLUSTER, "timeout": "10s"}},
                {"name": "stats_not_found", "match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": "only GET /stats/prometheus\n"}}},
            ]}]},
        http_filters=[{"name": "envoy.filters.http.router",
                       "typed_config": typed("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")}],
    )
    return {"name": STATS_LISTENER,
            "address": {"socket_address": {"address": settings.bind_host, "port_value": settings.envoy_stats_port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def _admin_cluster(settings: Settings) -> dict:
    endpoint = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": settings.envoy_admin_port}}}}
    return {"name": ADMIN_CLUSTER, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": ADMIN_CLUSTER, "endpoints": [{"lb_endpoints": [endpoint]}]}}


def extend(settings: Settings, config: dict) -> dict:
    """The bootstrap with the docs routes first on the API listener, and the optional stats listener after it
    (tools read listener 0 as the API)."""
    resources = config["static_resources"]
    api = resources["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    api["max_direct_response_body_size_bytes"] = MAX_DOCS_BYTES
    api["virtual_hosts"][0]["routes"][:0] = _docs_routes()
    if settings.envoy_stats_port >= 0:
        if settings.envoy_admin_port == 0:
            raise ValueError("ENVOY_STATS_PORT needs a fixed ENVOY_ADMIN_PORT (the stats listener forwards to it)")
        resources["listeners"].append(_stats_listener(settings))
        resources["clusters"].append(_admin_cluster(settings))
    return config
