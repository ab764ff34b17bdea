"""Listeners and routes beside the API that `render()` adds in one call (`extend`).

The stats listener: Envoy's admin can change runtime and stop Envoy, so it stays on loopback; a scraper in another
container (Prometheus in docker-compose or Kubernetes) reads `/stats/prometheus` from a listener of its own that
routes that one path to the admin and answers 404 to everything else. Off unless ENVOY_STATS_PORT is set.
"""
from __future__ import annotations

from gateway.names import typed
from services.common.settings import Settings

STATS_LISTENER = "stats"
STATS_PATH = "/stats/prometheus"
ADMIN_CLUSTER = "envoy_admin"


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
    """The bootstrap with the optional stats listener (after the API listener: tools read listener 0 as the API)."""
    resources = config["static_resources"]
    if settings.envoy_stats_port >= 0:
        if settings.envoy_admin_port == 0:
            raise ValueError("ENVOY_STATS_PORT needs a fixed ENVOY_ADMIN_PORT (the stats listener forwards to it)")
        resources["listeners"].append(_stats_listener(settings))
        resources["clusters"].append(_admin_cluster(settings))
    return config
