"""Envoy's JSON access log: one line per call with what the caller sent and what the service answered.

Two things the log cannot read at the end of a call, because the transcoder rewrote them on the way:
- the caller's verb and path (a REST `GET /v1/models/versions` reaches the router as `POST
  /churn.v1.MonitoringService/ListModelVersions`): the first filter copies `:method` and `:path` into filter state
  (`set_filter_state`, before anything else runs), and the log reads them there;
- the service's gRPC status (for REST the transcoder turns it into an HTTP status and a JSON body and drops the
  `grpc-status` header, so `%GRPC_STATUS%` could only guess it back from the HTTP status: 400 → Internal, 404 →
  Unimplemented): a small Lua filter just before the router reads `grpc-status` from the upstream's response
  headers (trailers-only answers) or trailers (streamed through, never buffered) into dynamic metadata.

`grpc_status` is therefore what the service answered, for REST and gRPC callers alike; when no service answered
(Envoy refused the call: 401, 403, 404, 429, a body the transcoder could not parse) it is the gRPC status Envoy
sent a gRPC caller, and null for a REST caller, whose HTTP `status` is the whole answer. `flags` and `details` say
who answered (`via_upstream`, `local_rate_limited`, `jwt_authn_access_denied…`)."""
from __future__ import annotations

from gateway.names import FILTER, T, typed

REQUEST_METHOD_KEY = "churn.request.method"
REQUEST_PATH_KEY = "churn.request.path"
UPSTREAM_NS = "churn.upstream"

# Envoy's own names for gRPC codes (%GRPC_STATUS%'s CAMEL_STRING), so every line spells a status the same way.
GRPC_NAMES = ("OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
              "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
              "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")

UPSTREAM_STATUS_LUA = """
local NAMES = {%s}
function envoy_on_response(handle)
  local status = handle:headers():get("grpc-status")
  if status == nil then
    for _ in handle:bodyChunks() do end
    local trailers = handle:trailers()
    status = trailers and trailers:get("grpc-status")
  end
  if status ~= nil then
    handle:streamInfo():dynamicMetadata():set("%s", "grpc_status", NAMES[tonumber(status) or -1] or status)
  end
end
""" % (", ".join(f'[{code}] = "{name}"' for code, name in enumerate(GRPC_NAMES)), UPSTREAM_NS)


def _capture(key: str, command: str) -> dict:
    return {"object_key": key, "factory_key": "envoy.string",
            "format_string": {"text_format_source": {"inline_string": command}}}


def request_capture_filter() -> dict:
    """First in the chain: the caller's own verb and path, before the transcoder rewrites them."""
    return {"name": FILTER["set_filter_state"], "typed_config": typed(
        T + "set_filter_state.v3.Config",
        on_request_headers=[_capture(REQUEST_METHOD_KEY, "%REQ(:METHOD)%"),
                            _capture(REQUEST_PATH_KEY, "%REQ(:PATH)%")])}


def upstream_status_filter() -> dict:
    """Just before the router: the service's gRPC status as it answered, before the transcoder converts it."""
    return {"name": FILTER["upstream_grpc_status"], "typed_config": typed(
        T + "lua.v3.Lua", default_source_code={"inline_string": UPSTREAM_STATUS_LUA})}


FORMAT = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": f"%FILTER_STATE({REQUEST_METHOD_KEY}:PLAIN)%",
    "path": f"%FILTER_STATE({REQUEST_PATH_KEY}:PLAIN)%",
    "protocol": "%PROTOCOL%",
    "route": "%ROUTE_NAME%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": f"%DYNAMIC_METADATA({UPSTREAM_NS}:grpc_status)%",
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


def access_log() -> list[dict]:
    return [{"name": "envoy.access_loggers.stdout", "typed_config": typed(
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        log_format={"json_format": FORMAT})}]
