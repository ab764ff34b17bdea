"""Render the one Envoy v3 bootstrap for the suite from `Settings` and the access table in protos/.

Nothing here restates a port, a key, a limit, a role or a path: ports, hosts, keys, limits, the JWKS URL, the
message-size limit and the canary default come from `Settings`; who may call what, rate classes, retries, timeouts
and routing come from the `(churn.v1.access)` method options (`access_table()`); REST paths come from the
`google.api.http` rules of the same descriptors; runtime key names and layers from `canary_runtime`.

HTTP filter chain (order matters, see DESIGN "Verified on this machine"):
  header_mutation (drop client-sent x-jwt-*) → cors → api_key_auth (client/ops key, per route) → jwt_authn
  (per route; public routes exempt) → rbac (per route, on the verified role claim) → local_ratelimit (per route,
  per client address or per user and role) → grpc_json_transcoder → health_check (/healthz) → router.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import urllib.parse
from typing import Iterable

from google.api import annotations_pb2

from services.common import canary_runtime
from services.common.access import SERVICE_MODULES, MethodAccess, access_table
from services.common.settings import ROOT, Settings

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
METADATA_NS = "churn"  # endpoint metadata namespace (the alias an inference host serves)
JWT_REQUIREMENT = "token"
HEALTHZ_PATH = "/healthz"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")

# Clients of the api_key_auth filter (the names, never the keys, show in Envoy's logs and dumps).
CLIENT = "client"
OPS = "ops"

# Clusters. The canary pair's names are the runtime keys' suffixes, so they come from canary_runtime.
AUTH_CLUSTER = "auth"
JWKS_CLUSTER = "auth_jwks"
MONITORING_CLUSTER = "monitoring"
PRODUCTION_CLUSTER = canary_runtime.PRODUCTION_CLUSTER
STAGING_CLUSTER = canary_runtime.STAGING_CLUSTER  # aggregate: [staging hosts, production]
STAGING_HOSTS_CLUSTER = "inference_staging_hosts"
ALIAS_CLUSTERS = {"production": PRODUCTION_CLUSTER, "staging": STAGING_HOSTS_CLUSTER}
# The backend that answers reflection for every churn.v1 service at the gateway (start_server(reflect=...)).
REFLECTION_CLUSTER = AUTH_CLUSTER

SERVICE_CLUSTERS = {
    "churn.v1.AuthService": AUTH_CLUSTER,
    "churn.v1.MonitoringService": MONITORING_CLUSTER,
    "churn.v1.InferenceService": PRODUCTION_CLUSTER,
}

# Health checking and outlier detection (gateway behaviour, not deployment settings).
HEALTH_INTERVAL = "1s"
HEALTH_TIMEOUT = "1s"
RETRY_ON_IDEMPOTENT = "connect-failure,refused-stream,reset,unavailable"
# Safe for every RPC: the request provably never reached a server.
RETRY_ON_UNSENT = "connect-failure,refused-stream"
NUM_RETRIES = 2

_F = "envoy.filters.http."
FILTER = {name: _F + name for name in ("header_mutation", "cors", "api_key_auth", "jwt_authn", "rbac",
                                       "local_ratelimit", "grpc_json_transcoder", "health_check", "router")}
_T = "type.googleapis.com/envoy.extensions.filters.http."


@dataclasses.dataclass(frozen=True)
class HttpBinding:
    verb: str  # GET, POST, ...
    template: str  # /v1/users/{username}:approve

    @property
    def regex(self) -> str:
        return template_regex(self.template)


def template_regex(template: str) -> str:
    """A google.api.http path template as an RE2 fragment: `{x}`/`{x=*}` is one segment, `{x=**}` the rest."""
    out, pos = [], 0
    for match in re.finditer(r"\{([^}=]+)(?:=([^}]*))?\}", template):
        out.append(re.escape(template[pos:match.start()]))
        pattern = match.group(2) or "*"
        out.append(".+" if "**" in pattern else "[^/]+")
        pos = match.end()
    out.append(re.escape(template[pos:]))
    return "".join(out)


def http_bindings() -> dict[str, list[HttpBinding]]:
    """Full gRPC path → its REST bindings (the rule and its additional_bindings), from the descriptors."""
    result: dict[str, list[HttpBinding]] = {}
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                bindings = []
                for item in [rule, *rule.additional_bindings]:
                    kind = item.WhichOneof("pattern")
                    if kind is None:
                        continue
                    if kind == "custom":
                        bindings.append(HttpBinding(item.custom.kind.upper(), item.custom.path))
                    else:
                        bindings.append(HttpBinding(kind.upper(), getattr(item, kind)))
                result[f"/{service.full_name}/{method.name}"] = bindings
    return result


def transcoded_services() -> list[str]:
    return [service.full_name for module in SERVICE_MODULES for service in module.DESCRIPTOR.services_by_name.values()]


def _seconds(ms: int) -> str:
    return f"{ms / 1000:g}s"


def _typed(type_name: str, **fields) -> dict:
    return {"@type": type_name, **fields}


def _disabled() -> dict:
    return _typed("type.googleapis.com/envoy.config.route.v3.FilterConfig", disabled=True)


# ---------------------------------------------------------------- per-route filter configs

def _api_key_per_route(entry: MethodAccess | None, ops_only: bool) -> dict | None:
    if ops_only or (entry is not None and entry.ops_key_only):
        return _typed(_T + "api_key_auth.v3.ApiKeyAuthPerRoute", allowed_clients=[OPS])
    return None  # the filter-level config: either key


def _jwt_per_route(entry: MethodAccess | None) -> dict:
    if entry is None or entry.public:
        return _typed(_T + "jwt_authn.v3.PerRouteConfig", disabled=True)
    return _typed(_T + "jwt_authn.v3.PerRouteConfig", requirement_name=JWT_REQUIREMENT)


def _role_principal(role: str) -> dict:
    return {"sourced_metadata": {"metadata_matcher": {
        "filter": FILTER["jwt_authn"],
        "path": [{"key": JWT_PAYLOAD_KEY}, {"key": "role"}],
        "value": {"string_match": {"exact": role}},
    }}}


def _rbac_per_route(entry: MethodAccess | None) -> dict:
    if entry is None or entry.public:
        principals = [{"any": True}]
    else:
        principals = [_role_principal(role) for role in sorted(entry.roles)]
    policy = {"permissions": [{"any": True}], "principals": principals}
    return _typed(_T + "rbac.v3.RBACPerRoute", rbac={"rules": {"action": "ALLOW", "policies": {"roles": policy}}})


def _bucket(per_minute: int) -> dict:
    return {"max_tokens": per_minute, "tokens_per_fill": per_minute, "fill_interval": "60s"}


def _ratelimit_per_route(settings: Settings, rate: str, stat: str) -> dict | None:
    """Per client address (auth) or per user (predict; role service gets the higher bucket). Each route has its
    own buckets; REST and gRPC of one RPC share a route, so they share buckets."""
    if rate == "auth":
        rate_limits = [{"actions": [{"remote_address": {}}]}]
        descriptors = [{"entries": [{"key": "remote_address"}], "token_bucket": _bucket(settings.auth_rate_per_minute)}]
        default = settings.auth_rate_per_minute
    elif rate == "predict":
        rate_limits = [{"actions": [
            {"request_headers": {"header_name": ROLE_HEADER, "descriptor_key": "role"}},
            {"request_headers": {"header_name": SUB_HEADER, "descriptor_key": "sub"}},
        ]}]
        per_role = {"agent": settings.predict_rate_per_minute, "admin": settings.predict_rate_per_minute,
                    "service": settings.service_predict_rate_per_minute}
        descriptors = [{"entries": [{"key": "role", "value": role}, {"key": "sub"}], "token_bucket": _bucket(limit)}
                       for role, limit in per_role.items()]
        default = settings.predict_rate_per_minute
    else:
        return None
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return _typed(
        _T + "local_ratelimit.v3.LocalRateLimit",
        stat_prefix=f"rl_{stat}",
        # Only consulted when no descriptor matched (cannot happen after jwt_authn + rbac; a fail-closed guard).
        token_bucket=_bucket(default),
        filter_enabled={"runtime_key": f"ratelimit.{stat}.enabled", **always},
        filter_enforced={"runtime_key": f"ratelimit.{stat}.enforced", **always},
        rate_limited_as_resource_exhausted=True,
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
        always_consume_default_token_bucket=False,
        max_dynamic_descriptors=10000,
        response_headers_to_add=[{"header": {"key": "retry-after", "value": "60"},
                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        rate_limits=rate_limits,
        descriptors=descriptors,
    )


# ---------------------------------------------------------------- routes

def _retry_policy(entry: MethodAccess, canary: bool) -> dict:
    policy = {
        "retry_on": RETRY_ON_IDEMPOTENT if entry.retryable else RETRY_ON_UNSENT,
        "num_retries": NUM_RETRIES,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": _typed(
            "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}],
        "host_selection_retry_max_attempts": 3,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    if canary:  # the aggregate staging cluster: a retry moves to the next priority (production)
        policy["retry_priority"] = {"name": "envoy.retry_priorities.previous_priorities", "typed_config": _typed(
            "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            update_frequency=1)}  # the first retry already skips the failed priority
    return policy


def _action(entry: MethodAccess, target: str | list[dict], settings: Settings, canary: bool) -> dict:
    action: dict = {}
    if isinstance(target, str):
        action["cluster"] = target
    else:
        action["weighted_clusters"] = {"clusters": target, "runtime_key_prefix": canary_runtime.RUNTIME_KEY_PREFIX}
    timeout = _seconds(entry.timeout_ms)
    action["timeout"] = timeout
    if entry.timeout_ms:
        action["max_stream_duration"] = {"grpc_timeout_header_max": timeout}
    if not (entry.client_streaming or entry.server_streaming):
        action["retry_policy"] = _retry_policy(entry, canary)
    return action


def _route(name: str, match: dict, action: dict, per_filter: dict, response_headers: list[dict] | None = None) -> dict:
    route = {"name": name, "match": match, "route": action,
             "typed_per_filter_config": {k: v for k, v in per_filter.items() if v is not None}}
    if response_headers:
        route["response_headers_to_add"] = response_headers
    return route


def _per_filter(settings: Settings, entry: MethodAccess | None, stat: str, ops_only: bool = False) -> dict:
    return {
        FILTER["api_key_auth"]: _api_key_per_route(entry, ops_only),
        FILTER["jwt_authn"]: _jwt_per_route(entry),
        FILTER["rbac"]: _rbac_per_route(entry),
        FILTER["local_ratelimit"]: _ratelimit_per_route(settings, entry.rate, stat) if entry else None,
    }


def _method_routes(settings: Settings, entry: MethodAccess, bindings: list[HttpBinding],
                   ambiguous: set[tuple[str, str]]) -> list[dict]:
    """The routes of one RPC: one path regex matching its gRPC path and every unambiguous REST path (so REST and gRPC
    share the route's rate-limit buckets); a REST path that another RPC uses with another verb gets its own route
    matched on the method too (the renderer refuses that for rate-limited RPCs)."""
    stat = f"{entry.service.rsplit('.', 1)[-1]}_{entry.method}"
    alternatives = [re.escape(entry.path)]
    routes: list[dict] = []
    per_filter = _per_filter(settings, entry, stat)
    canary = entry.routing == "canary"
    # The alias of the host that finally answered (endpoint metadata), not the split entry chosen: with the aggregate
    # cluster a dead canary's call is served by production and says so. Absent on local replies (no upstream).
    served_by = [{"header": {"key": SERVED_BY_HEADER, "value": f"%UPSTREAM_METADATA({METADATA_NS}:alias)%"},
                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    if entry.service != "churn.v1.InferenceService":
        served_by = None

    def target_routes(path_match: dict, suffix: str, extra_headers: list[dict]) -> list[dict]:
        match = dict(path_match, headers=extra_headers) if extra_headers else dict(path_match)
        if entry.routing == "canary":
            pinned = []
            for alias, cluster in ALIAS_CLUSTERS.items():
                pin = [*extra_headers, {"name": PIN_HEADER, "string_match": {"exact": alias}}]
                pinned.append(_route(f"{stat}{suffix}_pin_{alias}", dict(path_match, headers=pin),
                                     _action(entry, cluster, settings, canary=False),
                                     _per_filter(settings, entry, f"{stat}_pin", ops_only=True), served_by))
            split = [{"name": PRODUCTION_CLUSTER, "weight": 100 - settings.canary_percent},
                     {"name": STAGING_CLUSTER, "weight": settings.canary_percent}]
            return [*pinned, _route(f"{stat}{suffix}", match, _action(entry, split, settings, canary=True),
                                    per_filter, served_by)]
        if entry.routing == "alias":
            staging = ALIAS_CLUSTERS["staging"]
            pin = {"name": PIN_HEADER, "string_match": {"exact": "staging"}}
            by_header = dict(path_match, headers=[*extra_headers, pin])
            by_query = dict(match, query_parameters=[{"name": PIN_QUERY, "string_match": {"exact": "staging"}}])
            return [
                _route(f"{stat}{suffix}_staging", by_header, _action(entry, staging, settings, False), per_filter,
                       served_by),
                _route(f"{stat}{suffix}_staging_q", by_query, _action(entry, staging, settings, False), per_filter,
                       served_by),
                _route(f"{stat}{suffix}", match, _action(entry, ALIAS_CLUSTERS["production"], settings, False),
                       per_filter, served_by),
            ]
        return [_route(f"{stat}{suffix}", match, _action(entry, SERVICE_CLUSTERS[entry.service], settings, False),
                       per_filter)]

    for binding in bindings:
        if (binding.verb, binding.template) in ambiguous:
            if entry.rate != "none":
                raise ValueError(f"{entry.path}: REST path {binding.template} is shared with another RPC, so REST and "
                                 "gRPC would get separate rate-limit buckets")
            method_header = [{"name": ":method", "string_match": {"exact": binding.verb}}]
            routes += target_routes({"safe_regex": {"regex": f"^{binding.regex}$"}}, f"_{binding.verb.lower()}",
                                    method_header)
        else:
            alternatives.append(binding.regex)
    routes += target_routes({"safe_regex": {"regex": f"^(?:{'|'.join(alternatives)})$"}}, "", [])
    return routes


def build_routes(settings: Settings) -> list[dict]:
    table = access_table()
    bindings = http_bindings()
    verbs_by_path: dict[str, set[str]] = {}
    for path, items in bindings.items():
        if table[path].routing == "internal":
            continue
        for item in items:
            verbs_by_path.setdefault(item.template, set()).add(item.verb)
    ambiguous = {(verb, template) for template, verbs in verbs_by_path.items() if len(verbs) > 1 for verb in verbs}

    routes: list[dict] = [{
        # Answered by the health_check filter before the router; no key needed (load balancers probe it).
        "name": "healthz", "match": {"path": HEALTHZ_PATH},
        "direct_response": {"status": 503, "body": {"inline_string": "health_check filter missing\n"}},
        "typed_per_filter_config": {FILTER["api_key_auth"]: _disabled(), FILTER["jwt_authn"]: _jwt_per_route(None),
                                    FILTER["rbac"]: _rbac_per_route(None)},
    }]
    for service in REFLECTION_SERVICES:
        routes.append({"name": service.rsplit(".", 2)[-2] + "_reflection", "match": {"prefix": f"/{service}/"},
                       "route": {"cluster": REFLECTION_CLUSTER, "timeout": "0s"},
                       "typed_per_filter_config": {k: v for k, v in _per_filter(settings, None, "reflection").items()
                                                   if v is not None}})
    # Ambiguous (verb-specific) REST routes must come before the combined path regexes that would also match them.
    ordered = sorted(table.values(), key=lambda e: (e.service, e.method))
    method_routes = [r for entry in ordered if entry.routing != "internal"
                     for r in _method_routes(settings, entry, bindings[entry.path], ambiguous)]
    method_routes.sort(key=lambda r: not any(h.get("name") == ":method" for h in r["match"].get("headers", [])))
    # Anything else (unknown paths, internal RPCs): 404 after the API key check (gRPC clients see UNIMPLEMENTED),
    # never forwarded. RBAC's filter-level deny stays as the guard if this route were ever removed.
    not_found = {"name": "not_found", "match": {"prefix": "/"},
                 "direct_response": {"status": 404, "body": {"inline_string": '{"code":5,"message":"no such route"}'}},
                 "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"},
                                              "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                 "typed_per_filter_config": {FILTER["jwt_authn"]: _jwt_per_route(None),
                                             FILTER["rbac"]: _rbac_per_route(None)}}
    return routes + method_routes + [not_found]


# ---------------------------------------------------------------- filters

def _jwt_authn(settings: Settings) -> dict:
    provider = {
        "issuer": settings.jwt_issuer,
        "audiences": [settings.jwt_audience],
        "clock_skew_seconds": JWT_CLOCK_SKEW_SECONDS,
        "remote_jwks": {
            "http_uri": {"uri": settings.jwks_url, "cluster": JWKS_CLUSTER, "timeout": "2s"},
            "cache_duration": f"{settings.jwks_cache_seconds}s",
            # One shared cache fetched in the background; the listener waits for the first fetch.
            "async_fetch": {"fast_listener": False},
            "retry_policy": {"num_retries": 3, "retry_back_off": {"base_interval": "0.2s", "max_interval": "2s"}},
        },
        "forward": True,  # services verify the token themselves (DESIGN clarification 1)
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        "from_cookies": ["access_token"],
        "claim_to_headers": [{"header_name": SUB_HEADER, "claim_name": "sub"},
                             {"header_name": ROLE_HEADER, "claim_name": "role"}],
        "payload_in_metadata": JWT_PAYLOAD_KEY,
    }
    return _typed(_T + "jwt_authn.v3.JwtAuthentication", providers={JWT_PROVIDER: provider},
                  requirement_map={JWT_REQUIREMENT: {"provider_name": JWT_PROVIDER}})


def _http_filters(settings: Settings, descriptor: pathlib.Path) -> list[dict]:
    if not settings.api_key or not settings.ops_api_key:
        raise ValueError("API_KEY and OPS_API_KEY must be set (run tools/init_secrets.py); no default key works")
    if settings.api_key == settings.ops_api_key:
        raise ValueError("API_KEY and OPS_API_KEY must differ")
    health_clusters = [AUTH_CLUSTER, MONITORING_CLUSTER, PRODUCTION_CLUSTER]
    return [
        {"name": FILTER["header_mutation"], "typed_config": _typed(
            _T + "header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [{"remove_on_match": {"key_matcher": {"prefix": JWT_HEADER_PREFIX}}}]})},
        {"name": FILTER["cors"], "typed_config": _typed(_T + "cors.v3.Cors")},
        {"name": FILTER["api_key_auth"], "typed_config": _typed(
            _T + "api_key_auth.v3.ApiKeyAuth",
            credentials=[{"key": settings.api_key, "client": CLIENT}, {"key": settings.ops_api_key, "client": OPS}],
            key_sources=[{"header": API_KEY_HEADER}])},
        {"name": FILTER["jwt_authn"], "typed_config": _jwt_authn(settings)},
        # Deny by default: every route carries its own policy; a request matching no route is refused here.
        {"name": FILTER["rbac"],
         "typed_config": _typed(_T + "rbac.v3.RBAC", rules={"action": "ALLOW", "policies": {}})},
        {"name": FILTER["local_ratelimit"], "typed_config": _typed(
            _T + "local_ratelimit.v3.LocalRateLimit", stat_prefix="local_rate_limit")},
        {"name": FILTER["grpc_json_transcoder"], "typed_config": _typed(
            _T + "grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(descriptor),
            services=transcoded_services(),
            match_incoming_request_route=True,
            convert_grpc_status=True,
            case_insensitive_enum_parsing=True,
            max_request_body_size=settings.max_message_bytes,
            max_response_body_size=settings.max_message_bytes,
            print_options={"always_print_primitive_fields": True, "preserve_proto_field_names": True,
                           "add_whitespace": False, "always_print_enums_as_ints": False})},
        {"name": FILTER["health_check"], "typed_config": _typed(
            _T + "health_check.v3.HealthCheck",
            pass_through_mode=False,
            headers=[{"name": ":path", "string_match": {"exact": HEALTHZ_PATH}}],
            cluster_min_healthy_percentages={name: {"value": 100.0} for name in health_clusters})},
        {"name": FILTER["router"], "typed_config": _typed(_T + "router.v3.Router")},
    ]


def _cors_policy(settings: Settings) -> dict:
    return _typed(
        _T + "cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in settings.cors_allowed_origins],
        allow_methods="GET, POST, OPTIONS",
        allow_headers=", ".join(["authorization", "content-type", API_KEY_HEADER, PIN_HEADER, "x-grpc-web",
                                 "grpc-timeout", "x-request-id"]),
        expose_headers=", ".join(["grpc-status", "grpc-message", "x-request-id", SERVED_BY_HEADER, "retry-after",
                                  "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]),
        allow_credentials=True,
        max_age="600",
    )


ACCESS_LOG_FORMAT = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "route": "%ROUTE_NAME%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": "%GRPC_STATUS%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "user": "%REQ(X-JWT-SUB)%",
    "role": "%REQ(X-JWT-ROLE)%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def _listener(settings: Settings, descriptor: pathlib.Path) -> dict:
    hcm = _typed(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress",
        codec_type="AUTO",  # HTTP/1.1 (REST) and h2c (gRPC) on one port
        use_remote_address=True,  # the client is the TCP peer: X-Forwarded-For cannot dodge per-client limits
        generate_request_id=True,
        always_set_request_id_in_response=True,
        http2_protocol_options={"max_concurrent_streams": 1024},
        stream_idle_timeout="300s",
        access_log=[{"name": "envoy.access_loggers.stdout", "typed_config": _typed(
            "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            log_format={"json_format": ACCESS_LOG_FORMAT})}],
        route_config={
            "name": "churn",
            "virtual_hosts": [{
                "name": "churn",
                "domains": ["*"],
                "routes": build_routes(settings),
                "typed_per_filter_config": {FILTER["cors"]: _cors_policy(settings)},
            }],
        },
        http_filters=_http_filters(settings, descriptor),
    )
    return {
        "name": "gateway",
        "address": {"socket_address": {"address": settings.bind_host, "port_value": settings.gateway_port}},
        "per_connection_buffer_limit_bytes": settings.max_message_bytes,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }


# ---------------------------------------------------------------- clusters

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


def _grpc_cluster(settings: Settings, name: str, host: str, port: int, health_service: str,
                  alias: str | None = None) -> dict:
    return {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": settings.max_message_bytes,
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            explicit_http_config={"http2_protocol_options": {}})},
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
        "outlier_detection": {
            "consecutive_5xx": 5,
            "consecutive_gateway_failure": 3,
            "enforcing_consecutive_gateway_failure": 100,
            "interval": "5s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 100,
        },
    }


def _clusters(settings: Settings) -> list[dict]:
    jwks = urllib.parse.urlsplit(settings.jwks_url)
    if jwks.scheme != "http" or not jwks.hostname or not jwks.port:
        raise ValueError(f"JWKS URL must be http://host:port/... (auth's side port), got {settings.jwks_url}")
    inference = "churn.v1.InferenceService"
    return [
        _grpc_cluster(settings, AUTH_CLUSTER, settings.auth_host, settings.auth_port, "churn.v1.AuthService"),
        _grpc_cluster(settings, MONITORING_CLUSTER, settings.monitoring_host, settings.monitoring_port,
                      "churn.v1.MonitoringService"),
        _grpc_cluster(settings, PRODUCTION_CLUSTER, settings.inference_host("production"),
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
            "cluster_type": {"name": "envoy.clusters.aggregate", "typed_config": _typed(
                "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig",
                clusters=[STAGING_HOSTS_CLUSTER, PRODUCTION_CLUSTER])},
        },
        {
            "name": JWKS_CLUSTER,
            "type": "STRICT_DNS",
            "dns_lookup_family": "V4_PREFERRED",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": JWKS_CLUSTER,
                                "endpoints": [{"lb_endpoints": [_endpoint(jwks.hostname, jwks.port)]}]},
        },
    ]


# ---------------------------------------------------------------- bootstrap

def render(settings: Settings, descriptor: pathlib.Path = DESCRIPTOR_SET) -> dict:
    """The complete Envoy bootstrap as plain data."""
    return {
        "node": {"id": "churn-gateway", "cluster": "churn"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": settings.envoy_admin_port}}},
        "layered_runtime": {"layers": canary_runtime.runtime_layers(settings.data_dir, settings.canary_percent)},
        "static_resources": {"listeners": [_listener(settings, descriptor)], "clusters": _clusters(settings)},
    }


def write(config: dict, path: pathlib.Path) -> pathlib.Path:
    """YAML for *.yaml/*.yml, JSON otherwise; mode 0600 (the file holds the API keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(config, sort_keys=False, width=120)
    else:
        text = json.dumps(config, indent=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(text)
    tmp.replace(path)
    return path


def prepare(settings: Settings, out: pathlib.Path, descriptor: pathlib.Path = DESCRIPTOR_SET) -> pathlib.Path:
    """Render and write the config, and make sure the canary disk layer exists (a restart keeps the weight)."""
    if not descriptor.exists():
        raise FileNotFoundError(f"{descriptor} missing: run `python tools/codegen.py` (make gen)")
    canary_runtime.ensure_persisted(settings.data_dir, settings.canary_percent)
    return write(render(settings, descriptor), out)


def routed_paths(config: dict) -> Iterable[dict]:
    """Every route of the rendered config (for tests and tooling)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for host in network_filter["typed_config"]["route_config"]["virtual_hosts"]:
                    yield from host["routes"]
