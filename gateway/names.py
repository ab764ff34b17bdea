"""Names the gateway owns (headers, clusters, filters, retry behaviour) and tiny helpers for Envoy's typed
configs, shared by the route, cluster and bootstrap renderers. Nothing here is a deployment setting: those are in
`Settings`."""
from __future__ import annotations

from services.common import canary_runtime
from services.common.health import HEALTHZ_PATH  # noqa: F401 - re-exported: the gateway routes it
from services.common.settings import ROOT

DESCRIPTOR_SET = ROOT / "gen" / "churn.pb"

# Header names the gateway owns (not settings: they are part of the gateway's public interface).
API_KEY_HEADER = "x-api-key"
PIN_HEADER = "x-churn-alias"  # ops pin (canary routes) / alias choice (alias routes): production | staging
PIN_QUERY = "alias"  # ?alias=staging on alias routes (GetModelInfo over REST)
SERVED_BY_HEADER = "x-churn-served-by"  # which inference cluster finally served a prediction
JWT_HEADER_PREFIX = "x-jwt-"
SUB_HEADER = "x-jwt-sub"
ROLE_HEADER = "x-jwt-role"
JWT_PAYLOAD_KEY = "jwt_payload"
JWT_PROVIDER = "churn_auth"
# Envoy's default leeway on exp/nbf is 60 s: an expired token would pass the gateway for a minute (services allow 0).
JWT_CLOCK_SKEW_SECONDS = 5
# Verified tokens each Envoy worker remembers (LRU, keyed by the whole token): a repeat call skips the ES256
# signature check, still checks issuer, audience and expiry (with the skew above). Tokens signed with a retired key
# stay valid until they expire either way (DESIGN: retired keys stay published until then).
JWT_CACHE_SIZE = 1000
METADATA_NS = "churn"  # endpoint metadata namespace (the alias an inference host serves)
JWT_REQUIREMENT = "token"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")

# Clients of the api_key_auth filter (the names, never the keys, show in Envoy's logs and dumps).
CLIENT = "client"
OPS = "ops"

# Clusters. The canary pair's names are the runtime keys' suffixes, so they come from canary_runtime.
AUTH_CLUSTER = "auth"
JWKS_CLUSTER = "auth_jwks"
MONITORING_CLUSTER = "monitoring"
# The production side of the split also mirrors (shadow traffic) to the staging hosts: only requests the split sent
# to production are copied, never one staging already answers.
PRODUCTION_CLUSTER = canary_runtime.PRODUCTION_CLUSTER
STAGING_CLUSTER = canary_runtime.STAGING_CLUSTER  # aggregate: [staging hosts, production]
STAGING_HOSTS_CLUSTER = "inference_staging_hosts"
# The same production hosts without the mirror, for calls that name one instance (alias-bound RPCs, ops pins): an
# admin's ReloadModel or a pinned call is never replayed on staging.
PRODUCTION_HOSTS_CLUSTER = "inference_production_hosts"
ALIAS_CLUSTERS = {"production": PRODUCTION_HOSTS_CLUSTER, "staging": STAGING_HOSTS_CLUSTER}
# The backend that answers reflection for every churn.v1 service at the gateway (start_server(reflect=...)).
REFLECTION_CLUSTER = AUTH_CLUSTER
# grpc.health.v1 through the gateway names no upstream in its path: monitoring answers it for every service from
# Envoy's own health view (services/common/health.py), and serves /healthz on its HTTP side port.
HEALTH_GRPC_PREFIX = "/grpc.health.v1.Health/"
HEALTH_CLUSTER = MONITORING_CLUSTER
HEALTHZ_CLUSTER = "monitoring_http"

SERVICE_CLUSTERS = {
    "churn.v1.AuthService": AUTH_CLUSTER,
    "churn.v1.MonitoringService": MONITORING_CLUSTER,
    "churn.v1.InferenceService": PRODUCTION_CLUSTER,
    "inference.GRPCInferenceService": PRODUCTION_CLUSTER,  # the Open Inference Protocol, on the inference port
}

# Health checking and outlier detection (gateway behaviour, not deployment settings).
HEALTH_INTERVAL = "1s"
HEALTH_TIMEOUT = "1s"
# An inference instance is INFERENCE_WORKERS processes on one port, and the kernel spreads connections, not calls,
# over them (SO_REUSEPORT). Envoy multiplexes all of a worker thread's calls over one HTTP/2 connection per host by
# default, so every call could land on one process (measured: half the direct throughput at 8 and 32 callers). One
# call per upstream connection makes Envoy hold as many connections as calls in flight (pooled, reused), spread
# over the processes like direct callers' connections.
INFERENCE_STREAMS_PER_CONNECTION = 1
RETRY_ON_IDEMPOTENT = "connect-failure,refused-stream,reset,unavailable"
# Safe for every RPC: the request provably never reached a server.
RETRY_ON_UNSENT = "connect-failure,refused-stream"
NUM_RETRIES = 2

F = "envoy.filters.http."
FILTER = {name: F + name for name in ("set_filter_state", "header_mutation", "cors", "api_key_auth", "jwt_authn",
                                       "rbac", "local_ratelimit", "grpc_json_transcoder", "health_check", "router",
                                       # two Lua filters of ours (gateway/access_log.py, gateway/rate_limits.py)
                                       "upstream_grpc_status", "rate_limit_headers")}
T = "type.googleapis.com/envoy.extensions.filters.http."


def seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


def typed(type_name: str, **fields) -> dict:
    return {"@type": type_name, **fields}


def disabled() -> dict:
    return typed("type.googleapis.com/envoy.config.route.v3.FilterConfig", disabled=True)


def only_with_header(extension: dict, header: str, response: bool = False) -> dict:
    """An HTTP filter's typed config wrapped so that Envoy skips the filter (never calls it) unless the request — or,
    with `response`, the response — carries `header`: a filter needed on a few calls costs the rest nothing. A
    response-header condition is decided when the response headers arrive (the request side still runs)."""
    kind = "HttpResponseHeaderMatchInput" if response else "HttpRequestHeaderMatchInput"
    has_header = {"single_predicate": {
        "input": {"name": header, "typed_config": typed(f"type.googleapis.com/envoy.type.matcher.v3.{kind}",
                                                        header_name=header)},
        "value_match": {"safe_regex": {"google_re2": {}, "regex": ".*"}}}}
    skip = {"action": {"name": "skip", "typed_config": typed(
        "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter")}}
    return typed("type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher",
                 extension_config={"name": extension["@type"].rsplit(".", 1)[-1], "typed_config": extension},
                 xds_matcher={"matcher_list": {"matchers": [{"predicate": {"not_matcher": has_header},
                                                             "on_match": skip}]}})
