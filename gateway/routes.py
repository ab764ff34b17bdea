"""Envoy routes from the access table and the `google.api.http` rules: one route per RPC matching both its gRPC
path and its REST paths (so both share rate-limit buckets), with per-route API-key, JWT, RBAC and rate-limit
configs, retries, timeouts, the weighted canary split and alias pins."""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from google.api import annotations_pb2

from gateway.names import (ALIAS_CLUSTERS, FILTER, HEALTH_CLUSTER, HEALTH_GRPC_PREFIX, HEALTHZ_CLUSTER, HEALTHZ_PATH,
                           JWT_PAYLOAD_KEY, JWT_REQUIREMENT, METADATA_NS,
                           NUM_RETRIES, OPS, PIN_HEADER, PIN_QUERY, PRODUCTION_CLUSTER, REFLECTION_CLUSTER,
                           REFLECTION_SERVICES, RETRY_ON_IDEMPOTENT, RETRY_ON_UNSENT, SERVED_BY_HEADER,
                           SERVICE_CLUSTERS, STAGING_CLUSTER, T, disabled, seconds, typed)
from gateway import rate_limits
from services.common import canary_runtime
from services.common.access import OPEN_INFERENCE_MODULE, SERVICE_MODULES, MethodAccess, access_table
from services.common.settings import Settings


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
    """Full gRPC path → its REST bindings (the rule and its additional_bindings), from the descriptors. The Open
    Inference Protocol's methods have none: gRPC only (its REST form is not the proto's JSON mapping)."""
    result: dict[str, list[HttpBinding]] = {}
    for module in (*SERVICE_MODULES, OPEN_INFERENCE_MODULE):
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


# ---------------------------------------------------------------- per-route filter configs

def _api_key_per_route(entry: MethodAccess | None, ops_only: bool) -> dict | None:
    if ops_only or (entry is not None and entry.ops_key_only):
        return typed(T + "api_key_auth.v3.ApiKeyAuthPerRoute", allowed_clients=[OPS])
    return None  # the filter-level config: either key


def _jwt_per_route(entry: MethodAccess | None) -> dict:
    if entry is None or entry.public:
        return typed(T + "jwt_authn.v3.PerRouteConfig", disabled=True)
    return typed(T + "jwt_authn.v3.PerRouteConfig", requirement_name=JWT_REQUIREMENT)


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
    return typed(T + "rbac.v3.RBACPerRoute", rbac={"rules": {"action": "ALLOW", "policies": {"roles": policy}}})


# ---------------------------------------------------------------- routes

def _retry_policy(entry: MethodAccess, canary: bool) -> dict:
    policy = {
        "retry_on": RETRY_ON_IDEMPOTENT if entry.retryable else RETRY_ON_UNSENT,
        "num_retries": NUM_RETRIES,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": typed(
            "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate")}],
        "host_selection_retry_max_attempts": 3,
        "retry_back_off": {"base_interval": "0.025s", "max_interval": "0.25s"},
    }
    if canary:  # the aggregate staging cluster: a retry moves to the next priority (production)
        policy["retry_priority"] = {"name": "envoy.retry_priorities.previous_priorities", "typed_config": typed(
            "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
            update_frequency=1)}  # the first retry already skips the failed priority
    return policy


def _action(entry: MethodAccess, target: str | list[dict], settings: Settings, canary: bool) -> dict:
    action: dict = {}
    if isinstance(target, str):
        action["cluster"] = target
    else:
        action["weighted_clusters"] = {"clusters": target, "runtime_key_prefix": canary_runtime.RUNTIME_KEY_PREFIX}
    timeout = seconds(entry.timeout_ms)
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
        FILTER["local_ratelimit"]: rate_limits.per_route(settings, entry.rate, stat) if entry else None,
        FILTER["rate_limit_headers"]: rate_limits.headers_per_route(entry.rate if entry else "none"),
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
    # The alias of the host that finally answered (endpoint metadata), not the split entry chosen: with the aggregate
    # cluster a dead canary's call is served by production and says so. Absent on local replies (no upstream).
    served_by = [{"header": {"key": SERVED_BY_HEADER, "value": f"%UPSTREAM_METADATA({METADATA_NS}:alias)%"},
                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    if SERVICE_CLUSTERS[entry.service] != PRODUCTION_CLUSTER:  # only inference routes name who served
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
        # Envoy's view of every upstream as JSON, from monitoring's side port; no key needed (load balancers probe
        # it), plain HTTP: the transcoder stays out of it.
        "name": "healthz", "match": {"path": HEALTHZ_PATH},
        "route": {"cluster": HEALTHZ_CLUSTER, "timeout": "3s"},
        "typed_per_filter_config": {FILTER["api_key_auth"]: disabled(), FILTER["jwt_authn"]: _jwt_per_route(None),
                                    FILTER["rbac"]: _rbac_per_route(None),
                                    FILTER["grpc_json_transcoder"]: disabled()},
    }, {
        "name": "health", "match": {"prefix": HEALTH_GRPC_PREFIX}, "route": {"cluster": HEALTH_CLUSTER, "timeout": "5s"},
        "typed_per_filter_config": {k: v for k, v in _per_filter(settings, None, "health").items() if v is not None},
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


def routed_paths(config: dict) -> Iterable[dict]:
    """Every route of the rendered config (for tests and tooling)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for host in network_filter["typed_config"]["route_config"]["virtual_hosts"]:
                    yield from host["routes"]
