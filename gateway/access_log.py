"""Envoy's JSON access log: one line per call with what the caller sent and what the service answered.

Two things the log cannot read at the end of a call, because the transcoder rewrote them on the way:
- the caller's verb and path (a REST `GET /v1/models/versions` reaches the router as `POST
  /churn.v1.MonitoringService/ListModelVersions`): the first filter copies `:method` and `:path` into filter state
  (`set_filter_state`, before anything else runs), and the log reads them there;
- for a REST caller, the service's gRPC status (the transcoder turns it into an HTTP status and a JSON body and
  drops `grpc-status`, so `%GRPC_STATUS%` could only guess it back from the HTTP status: 400 → Internal, 404 →
  Unimplemented): a small Lua filter just before the router reads `grpc-status` from the upstream's response
  headers (trailers-only answers) or trailers (streamed through, never buffered) into dynamic metadata. Envoy calls
  it only for requests the transcoder rewrote (they carry its `x-envoy-original-path`), and for local replies.

A gRPC caller gets the service's own `grpc-status` (or Envoy's, on a local reply), which `%GRPC_STATUS%` reads
exactly, so gRPC calls need no Lua: the log is two loggers with complementary filters on who called — a gRPC
caller (content type `application/grpc…` and no transcoder mark) is logged with `%GRPC_STATUS%`, everyone else
with the Lua's metadata. Exactly one of them writes each call's line.

`grpc_status` is therefore what the service answered, for REST and gRPC callers alike; when no service answered
(Envoy refused the call: 401, 403, 404, 429, a body the transcoder could not parse) it is the gRPC status Envoy
sent a gRPC caller, and null for a REST caller, whose HTTP `status` is the whole answer. `flags` and `details` say
who answered (`via_upstream`, `local_rate_limited`, `jwt_authn_access_denied…`)."""
from __future__ import annotations

from gateway.names import FILTER, T, only_with_header, typed

REQUEST_METHOD_KEY = "churn.request.method"
REQUEST_PATH_KEY = "churn.request.path"
UPSTREAM_NS = "churn.upstream"
# The transcoder sets it on every request it rewrites from REST to gRPC (and keeps the caller's path in it).
TRANSCODED_HEADER = "x-envoy-original-path"

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
    """Just before the router: the service's gRPC status as it answered, before the transcoder converts it; skipped
    for every request the transcoder did not rewrite (gRPC callers: their log line reads `%GRPC_STATUS%`)."""
    lua = typed(T + "lua.v3.Lua", default_source_code={"inline_string": UPSTREAM_STATUS_LUA})
    return {"name": FILTER["upstream_grpc_status"], "typed_config": only_with_header(lua, TRANSCODED_HEADER)}


FORMAT = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "method": f"%FILTER_STATE({REQUEST_METHOD_KEY}:PLAIN)%",
    "path": f"%FILTER_STATE({REQUEST_PATH_KEY}:PLAIN)%",
    "protocol": "%PROTOCOL%",
    "route": "%ROUTE_NAME%",
    "status": "%RESPONSE_CODE%",
    "grpc_status": f"%DYNAMIC_METADATA({UPSTREAM_NS}:grpc_status)%",  # a gRPC caller's line: GRPC_STATUS below
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
GRPC_STATUS = "%GRPC_STATUS(CAMEL_STRING)%"


def _content_type_grpc(caller: bool) -> dict:
    """Whether the request's content type is gRPC's (as the log sees it: after the transcoder set it); a request
    without one is not gRPC (read as empty: Envoy matches an absent header against nothing, inverted or not)."""
    return {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"},
                                         "treat_missing_header_as_empty": True, "invert_match": not caller}}}


def _transcoded(rewritten: bool) -> dict:
    return {"header_filter": {"header": {"name": TRANSCODED_HEADER, "present_match": rewritten}}}


def _grpc_caller(caller: bool) -> dict:
    """The log filter for gRPC callers (`caller`) or for everyone else: exact complements, so every call is logged
    once. The transcoder gives what it rewrites a gRPC content type, so its mark tells REST callers apart."""
    if caller:
        return {"and_filter": {"filters": [_content_type_grpc(True), _transcoded(False)]}}
    return {"or_filter": {"filters": [_content_type_grpc(False), _transcoded(True)]}}


def _stdout(log_format: dict, log_filter: dict) -> dict:
    return {"name": "envoy.access_loggers.stdout", "filter": log_filter, "typed_config": typed(
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        log_format={"json_format": log_format})}


def access_log() -> list[dict]:
    return [_stdout(dict(FORMAT, grpc_status=GRPC_STATUS), _grpc_caller(True)),
            _stdout(FORMAT, _grpc_caller(False))]
