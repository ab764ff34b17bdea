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

import json
import pathlib

from gateway import access_log, extras, rate_limits
from gateway.clusters import clusters
from gateway.names import (API_KEY_HEADER, CLIENT, DESCRIPTOR_SET, FILTER, JWKS_CLUSTER, JWT_CACHE_SIZE,
                           JWT_CLOCK_SKEW_SECONDS, JWT_HEADER_PREFIX, JWT_PAYLOAD_KEY, JWT_PROVIDER, JWT_REQUIREMENT,
                           OPS, PIN_HEADER, ROLE_HEADER, SERVED_BY_HEADER, SUB_HEADER, T, typed)
from gateway.routes import build_routes, transcoded_services
from services.common import canary_runtime
from services.common.direct_calls import GATEWAY_HEADER
from services.common.shadow import SHADOW_HEADER
from services.common.settings import Settings


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
        "jwt_cache_config": {"jwt_cache_size": JWT_CACHE_SIZE},  # repeat calls skip the signature check
    }
    return typed(T + "jwt_authn.v3.JwtAuthentication", providers={JWT_PROVIDER: provider},
                  requirement_map={JWT_REQUIREMENT: {"provider_name": JWT_PROVIDER}})


def _http_filters(settings: Settings, descriptor: pathlib.Path) -> list[dict]:
    if not settings.api_key or not settings.ops_api_key:
        raise ValueError("API_KEY and OPS_API_KEY must be set (run tools/init_secrets.py); no default key works")
    if settings.api_key == settings.ops_api_key:
        raise ValueError("API_KEY and OPS_API_KEY must differ")
    return [
        access_log.request_capture_filter(),
        {"name": FILTER["header_mutation"], "typed_config": typed(
            T + "header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [{"remove_on_match": {"key_matcher": {"prefix": JWT_HEADER_PREFIX}}}]})},
        {"name": FILTER["cors"], "typed_config": typed(T + "cors.v3.Cors")},
        rate_limits.headers_filter(),
        {"name": FILTER["api_key_auth"], "typed_config": typed(
            T + "api_key_auth.v3.ApiKeyAuth",
            credentials=[{"key": settings.api_key, "client": CLIENT}, {"key": settings.ops_api_key, "client": OPS}],
            key_sources=[{"header": API_KEY_HEADER}])},
        {"name": FILTER["jwt_authn"], "typed_config": _jwt_authn(settings)},
        # Deny by default: every route carries its own policy; a request matching no route is refused here.
        {"name": FILTER["rbac"],
         "typed_config": typed(T + "rbac.v3.RBAC", rules={"action": "ALLOW", "policies": {}})},
        {"name": FILTER["local_ratelimit"], "typed_config": typed(
            T + "local_ratelimit.v3.LocalRateLimit", stat_prefix="local_rate_limit")},
        {"name": FILTER["grpc_json_transcoder"], "typed_config": typed(
            T + "grpc_json_transcoder.v3.GrpcJsonTranscoder",
            proto_descriptor=str(descriptor),
            services=transcoded_services(),
            match_incoming_request_route=True,
            # A non-gRPC request no HTTP rule maps (wrong verb, unknown path or query parameter, JSON to a gRPC path)
            # is answered here, never forwarded raw to a gRPC server (which resets it: a caller's mistake would
            # look like an upstream failure).
            request_validation_options={"reject_unknown_method": True, "reject_unknown_query_parameters": True},
            convert_grpc_status=True,
            case_insensitive_enum_parsing=True,
            max_request_body_size=settings.max_message_bytes,
            max_response_body_size=settings.max_message_bytes,
            print_options={"always_print_primitive_fields": True, "preserve_proto_field_names": True,
                           "add_whitespace": False, "always_print_enums_as_ints": False})},
        access_log.upstream_status_filter(),
        {"name": FILTER["router"], "typed_config": typed(T + "router.v3.Router")},
    ]


def _cors_policy(settings: Settings) -> dict:
    return typed(
        T + "cors.v3.CorsPolicy",
        allow_origin_string_match=[{"exact": origin} for origin in settings.cors_allowed_origins],
        allow_methods="GET, POST, OPTIONS",
        allow_headers=", ".join(["authorization", "content-type", API_KEY_HEADER, PIN_HEADER, "x-grpc-web",
                                 "grpc-timeout", "x-request-id"]),
        expose_headers=", ".join(["grpc-status", "grpc-message", "x-request-id", SERVED_BY_HEADER, "retry-after",
                                  "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"]),
        allow_credentials=True,
        max_age="600",
    )


# A fixed text for the 404: Envoy's own repeats the caller's path. The transcoder's 400 keeps its own text, which
# names the field or parameter at fault (a caller's mistake must name the field); it travels in the JSON body,
# never in a header, and is no longer than the request that caused it.
LOCAL_REPLY_MESSAGES = {404: "no such route: the verb, path or query parameters match no method of the API"}


def _local_replies() -> dict:
    """Every error Envoy answers itself is JSON `{"code", "message"}`; the transcoder's 404 (and the catch-all
    route's) gets the fixed message above instead of a text that repeats the caller's path."""
    def body(message: str) -> dict:
        return {"json_format": {"code": "%RESPONSE_CODE%", "message": message}}

    def status(code: int) -> dict:
        return {"status_code_filter": {"comparison": {"op": "EQ", "value": {
            "default_value": code, "runtime_key": f"local_reply.code_{code}"}}}}

    errors = {"status_code_filter": {"comparison": {"op": "GE", "value": {
        "default_value": 400, "runtime_key": "local_reply.errors_from"}}}}
    # Only errors: a direct response that is content (the API docs page) keeps its own body and content type.
    return {"mappers": [*({"filter": status(code), "body_format_override": body(message)}
                          for code, message in LOCAL_REPLY_MESSAGES.items()),
                        {"filter": errors, "body_format_override": body("%LOCAL_REPLY_BODY%")}]}


def _gateway_stamp(settings: Settings) -> dict:
    """Every forwarded call carries the gateway secret (a client's own value is overwritten, or removed when no
    secret is set), so services can tell Envoy's calls from direct ones (services/common/direct_calls.py). A
    client's shadow mark is removed: only the mirror policy's copy carries one (services/common/shadow.py)."""
    if not settings.gateway_secret:
        return {"request_headers_to_remove": [GATEWAY_HEADER, SHADOW_HEADER]}
    return {"request_headers_to_remove": [SHADOW_HEADER],
            "request_headers_to_add": [{"header": {"key": GATEWAY_HEADER, "value": settings.gateway_secret},
                                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}


def _listener(settings: Settings, descriptor: pathlib.Path) -> dict:
    hcm = typed(
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        stat_prefix="ingress",
        codec_type="AUTO",  # HTTP/1.1 (REST) and h2c (gRPC) on one port
        use_remote_address=True,  # the client is the TCP peer: X-Forwarded-For cannot dodge per-client limits
        generate_request_id=True,
        always_set_request_id_in_response=True,
        http2_protocol_options={"max_concurrent_streams": 1024},
        stream_idle_timeout="300s",
        access_log=access_log.access_log(),
        route_config={
            "name": "churn",
            **_gateway_stamp(settings),
            "virtual_hosts": [{
                "name": "churn",
                "domains": ["*"],
                "routes": build_routes(settings),
                "typed_per_filter_config": {FILTER["cors"]: _cors_policy(settings)},
            }],
        },
        http_filters=_http_filters(settings, descriptor),
        local_reply_config=_local_replies(),
    )
    return {
        "name": "gateway",
        "address": {"socket_address": {"address": settings.bind_host, "port_value": settings.gateway_port}},
        "per_connection_buffer_limit_bytes": settings.max_message_bytes,
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": hcm}]}],
    }


# ---------------------------------------------------------------- bootstrap

def render(settings: Settings, descriptor: pathlib.Path = DESCRIPTOR_SET) -> dict:
    """The complete Envoy bootstrap as plain data."""
    return extras.extend(settings, {
        "node": {"id": "churn-gateway", "cluster": "churn"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": settings.envoy_admin_port}}},
        "layered_runtime": {"layers": canary_runtime.runtime_layers(settings.data_dir, settings.canary_percent,
                                                                     settings.shadow_percent)},
        "static_resources": {"listeners": [_listener(settings, descriptor)], "clusters": clusters(settings)},
    })


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
