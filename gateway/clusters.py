"""Envoy clusters: one HTTP/2 gRPC cluster per upstream with active gRPC health checks, outlier detection and a
retry budget; production twice (`inference_production`, the split's side, which mirrors shadow traffic to staging,
and `inference_production_hosts` for calls bound to that one instance); the aggregate `inference_staging` [staging
hosts, production] so a dead canary falls back; and the plain-HTTP cluster Envoy fetches auth's JWKS through.
Calls to an inference instance get one upstream connection each (pooled), so they spread over its worker processes
(names.INFERENCE_STREAMS_PER_CONNECTION)."""
from __future__ import annotations

import urllib.parse

from gateway.names import (AUTH_CLUSTER, HEALTH_INTERVAL, HEALTH_TIMEOUT, HEALTHZ_CLUSTER,
                           INFERENCE_STREAMS_PER_CONNECTION, JWKS_CLUSTER, METADATA_NS, MONITORING_CLUSTER,
                           PRODUCTION_CLUSTER, PRODUCTION_HOSTS_CLUSTER, STAGING_CLUSTER, STAGING_HOSTS_CLUSTER, typed)
from services.common import canary_runtime
from services.common.settings import Settings
from services.common.shadow import SHADOW_HEADER, SHADOW_VALUE


def _endpoint(host: str, port: int, alias: str | None = None) -> dict:
    endpoint: dict = {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
    if alias:
        endpoint["metadata"] = {"filter_metadata": {METADATA_NS: {"alias": alias}}}
    return endpoint


def _retry_budget(percent: float) -> dict:
    """Envoy allows only 3 concurrent retries per cluster by default: a dead canary under load overflows that and
    calls fail unretried. A budget bounds retries by the active requests instead (no retry storm either)."""
    return {"thresholds": [{"priority": "DEFAULT", "retry_budget": {"budget_percent": {"value": percent},
                                                                    "min_retry_concurrency": 32}}]}


def _outlier_detection() -> dict:
    """Eject a host only for failures of its own: errors it answered (gRPC INTERNAL/UNAVAILABLE/... map to 5xx)
    counted apart from local-origin events (connect failures, resets, timeouts: `split_external_local_origin_errors`).
    Caller mistakes never reach a host (the transcoder answers unmappable requests, services answer 4xx), so they
    count for nothing. A dead host is also caught by the active health checks."""
    return {
        "split_external_local_origin_errors": True,
        "consecutive_5xx": 5,
        "consecutive_gateway_failure": 3,
        "enforcing_consecutive_gateway_failure": 100,
        "consecutive_local_origin_failure": 5,
        "interval": "5s",
        "base_ejection_time": "10s",
        "max_ejection_percent": 100,
    }


def _shadow_mirror(settings: Settings) -> list[dict]:
    """Shadow traffic: a cluster-level mirror policy (Envoy copies a request only when it routes it to THIS cluster,
    so a request the split sent to staging is never copied to staging as well) to the staging hosts, for the
    runtime share SHADOW_KEY (set live by monitoring). Envoy appends `-shadow` to the copy's authority and the copy
    carries SHADOW_HEADER (the route config strips it from every incoming request); its reply is discarded."""
    return [{
        "cluster": STAGING_HOSTS_CLUSTER,
        "runtime_fraction": {"default_value": {"numerator": settings.shadow_percent, "denominator": "HUNDRED"},
                             "runtime_key": canary_runtime.SHADOW_KEY},
        "request_headers_mutations": [{"append": {"header": {"key": SHADOW_HEADER, "value": SHADOW_VALUE},
                                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}],
    }]


def _grpc_cluster(settings: Settings, name: str, host: str, port: int, health_service: str,
                  alias: str | None = None, mirror: list[dict] | None = None) -> dict:
    http2 = {"max_concurrent_streams": INFERENCE_STREAMS_PER_CONNECTION} if alias else {}  # inference: see names
    protocol = {"explicit_http_config": {"http2_protocol_options": http2}}
    if mirror:
        protocol["request_mirror_policies"] = mirror
    return {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": settings.max_message_bytes,
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed(
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions", **protocol)},
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [_endpoint(host, port, alias)]}]},
        "health_checks": [{
            "timeout": HEALTH_TIMEOUT,
            "interval": HEALTH_INTERVAL,
            "no_traffic_interval": HEALTH_INTERVAL,  # an idle canary is still watched closely
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "grpc_health_check": {"service_name": health_service},
        }],
        "circuit_breakers": _retry_budget(25.0),
        "outlier_detection": _outlier_detection(),
    }


def _http_cluster(name: str, host: str, port: int) -> dict:
    return {"name": name, "type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [_endpoint(host, port)]}]}}


def clusters(settings: Settings) -> list[dict]:
    jwks = urllib.parse.urlsplit(settings.jwks_url)
    if jwks.scheme != "http" or not jwks.hostname or not jwks.port:
        raise ValueError(f"JWKS URL must be http://host:port/... (auth's side port), got {settings.jwks_url}")
    inference = "churn.v1.InferenceService"
    return [
        _grpc_cluster(settings, AUTH_CLUSTER, settings.auth_host, settings.auth_port, "churn.v1.AuthService"),
        _grpc_cluster(settings, MONITORING_CLUSTER, settings.monitoring_host, settings.monitoring_port,
                      "churn.v1.MonitoringService"),
        _grpc_cluster(settings, PRODUCTION_CLUSTER, settings.inference_host("production"),
                      settings.inference_port("production"), inference, alias="production",
                      mirror=_shadow_mirror(settings)),
        _grpc_cluster(settings, PRODUCTION_HOSTS_CLUSTER, settings.inference_host("production"),
                      settings.inference_port("production"), inference, alias="production"),
        _grpc_cluster(settings, STAGING_HOSTS_CLUSTER, settings.inference_host("staging"),
                      settings.inference_port("staging"), inference, alias="staging"),
        {
            # The canary side of the split: staging hosts first, production as the next priority, so a dead or
            # unhealthy canary falls back instead of failing calls (DESIGN: the only config with 0 failures).
            "name": STAGING_CLUSTER,
            "connect_timeout": "1s",
            "lb_policy": "CLUSTER_PROVIDED",
            # every call that chose a dead canary retries once on production: up to the whole staging share
            "circuit_breakers": _retry_budget(100.0),
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": typed(
                "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                clusters=[STAGING_HOSTS_CLUSTER, PRODUCTION_CLUSTER])},
        },
        _http_cluster(HEALTHZ_CLUSTER, settings.monitoring_host, settings.monitoring_http_port),
        {
            "name": JWKS_CLUSTER,
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_PREFERRED",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": JWKS_CLUSTER,
                                "endpoints": [{"lb_endpoints": [_endpoint(jwks.hostname, jwks.port)]}]},
        },
    ]
