"""Envoy's local rate limits per route, and the headers of a rate-limited answer.

Buckets: per client address (the `auth` rate class) or per user and role (`predict`; the `service` role has the
higher bucket). Each route has its own buckets; REST and gRPC of one RPC share a route, so they share buckets.

A 429 (gRPC: RESOURCE_EXHAUSTED) carries `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` from
Envoy (draft 03; the bucket that refused the call, so per-descriptor limits report their own numbers) and a
`retry-after` that says the same as `x-ratelimit-reset`. Envoy 1.40 refills continuously (a bucket of N a minute
gets a token back every 60/N s) and truncates the wait to whole seconds, so a client retrying after the header's
value could be a fraction of a second early; the `rate_limit_headers` Lua filter (which sees the answer after the
rate-limit filter wrote its headers) rounds the wait up (never past the bucket's refill time of one token) and
writes it into both headers. Envoy calls it only for answers carrying `retry-after` (the rate-limited ones), so
the calls that pass cost no Lua. Without it the answer would still carry the retry-after the configuration implies
for the slowest bucket of the route.
"""
from __future__ import annotations

import math

from gateway.names import FILTER, ROLE_HEADER, SUB_HEADER, T, only_with_header, typed
from services.common.settings import Settings

FILL_SECONDS = 60
RETRY_AFTER = "retry-after"

# x-ratelimit-limit is the refusing bucket's size, which is also its refill per FILL_SECONDS: no wait is longer
# than FILL_SECONDS / limit (a token comes back that often), and Envoy's truncated value + 1 is never shorter.
RATE_LIMIT_HEADERS_LUA = """
function envoy_on_response(handle)
  local headers = handle:headers()
  local reset = tonumber(headers:get("x-ratelimit-reset") or "")
  local limit = tonumber(headers:get("x-ratelimit-limit") or "")
  if headers:get("%s") == nil or reset == nil or limit == nil or limit < 1 then
    return
  end
  local wait = tostring(math.max(1, math.min(reset + 1, math.ceil(%d / limit))))
  headers:replace("x-ratelimit-reset", wait)
  headers:replace("%s", wait)
end
""" % (RETRY_AFTER, FILL_SECONDS, RETRY_AFTER)


def _bucket(per_minute: int) -> dict:
    return {"max_tokens": per_minute, "tokens_per_fill": per_minute, "fill_interval": f"{FILL_SECONDS}s"}


def token_seconds(per_minute: int) -> int:
    """Whole seconds until an empty bucket of `per_minute` has a token again (continuous refill)."""
    return max(1, math.ceil(FILL_SECONDS / per_minute))


def _limits(settings: Settings, rate: str) -> tuple[list[dict], dict[str, int]] | None:
    """(rate_limits actions, descriptor name → per-minute limit) of a rate class; None when it has no limit."""
    if rate == "auth":
        return [{"actions": [{"remote_address": {}}]}], {"remote_address": settings.auth_rate_per_minute}
    if rate == "predict":
        actions = [{"actions": [{"request_headers": {"header_name": ROLE_HEADER, "descriptor_key": "role"}},
                                {"request_headers": {"header_name": SUB_HEADER, "descriptor_key": "sub"}}]}]
        return actions, {"agent": settings.predict_rate_per_minute, "admin": settings.predict_rate_per_minute,
                         "service": settings.service_predict_rate_per_minute}
    return None


def per_route(settings: Settings, rate: str, stat: str) -> dict | None:
    limits = _limits(settings, rate)
    if limits is None:
        return None
    rate_limits, per_minute = limits
    if rate == "auth":
        descriptors = [{"entries": [{"key": "remote_address"}], "token_bucket": _bucket(per_minute["remote_address"])}]
    else:
        descriptors = [{"entries": [{"key": "role", "value": role}, {"key": "sub"}], "token_bucket": _bucket(limit)}
                       for role, limit in per_minute.items()]
    slowest = min(per_minute.values())
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return typed(
        T + "local_ratelimit.v3.LocalRateLimit",
        stat_prefix=f"rl_{stat}",
        # Only consulted when no descriptor matched (cannot happen after jwt_authn + rbac; a fail-closed guard).
        token_bucket=_bucket(slowest),
        filter_enabled={"runtime_key": f"ratelimit.{stat}.enabled", **always},
        filter_enforced={"runtime_key": f"ratelimit.{stat}.enforced", **always},
        rate_limited_as_resource_exhausted=True,
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
        always_consume_default_token_bucket=False,
        max_dynamic_descriptors=10000,
        # Only on a rate-limited answer (it is also how the Lua filter knows one).
        response_headers_to_add=[{"header": {"key": RETRY_AFTER, "value": str(token_seconds(slowest))},
                                  "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
        rate_limits=rate_limits,
        descriptors=descriptors,
    )


def headers_filter() -> dict:
    """Before local_ratelimit in the chain, so it sees the answer after local_ratelimit added its headers; called
    only for an answer with `retry-after` (local_ratelimit adds it to rate-limited answers only): every other answer
    skips the Lua entirely."""
    lua = typed(T + "lua.v3.Lua", default_source_code={"inline_string": RATE_LIMIT_HEADERS_LUA})
    return {"name": FILTER["rate_limit_headers"], "typed_config": only_with_header(lua, RETRY_AFTER, response=True)}


def headers_per_route(rate: str) -> dict | None:
    """Off on routes without a rate limit (no Lua runs for them)."""
    return None if rate in ("auth", "predict") else typed(T + "lua.v3.LuaPerRoute", disabled=True)
