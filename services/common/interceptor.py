"""One server interceptor for every service: request id, API key, token and role (from the access table), shadow
detection (services.common.shadow), domain-error → status mapping, and the shared RPC metrics.

Domain code raises `services.common.errors` types; this is the only place they become gRPC statuses. Anything
else is a bug on our side: it is logged with the request id and the caller gets INTERNAL naming that id.
"""
from __future__ import annotations

import logging
import time

import grpc
from google.protobuf import any_pb2, descriptor_pool
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import direct_calls, identity, shadow
from services.common.access import MethodAccess, access_table
from services.common.errors import (AlreadyExists, DomainError, FailedPrecondition, InvalidInput, NotFound, NotReady,
                                    PermissionDenied, ResourceExhausted, Unauthenticated)
from services.common.logs import request_id_var
from services.common.metrics import GRPC_LATENCY, GRPC_REQUESTS

log = logging.getLogger("churn.rpc")


# The one place a domain error becomes a status code. DomainError itself is absent on purpose: it is only a base
# class, so an error no entry covers is our bug and answers INTERNAL (logged) like any other exception.
STATUS_CODES: dict[type[DomainError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    NotReady: grpc.StatusCode.UNAVAILABLE,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def status_code_for(error: DomainError) -> grpc.StatusCode:
    """The status code for a domain error, walking its MRO so a subclass maps like the class it refines;
    INTERNAL when nothing maps (a bare DomainError)."""
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


# A status travels in HTTP/2 trailers (grpc-message, grpc-status-details-bin), which gRPC clients cap at 8 KiB and
# Envoy answers 502 beyond its header limits: whatever a domain error says, what leaves is bounded here.
MAX_STATUS_MESSAGE_CHARS = 1000
MAX_VIOLATION_CHARS = 200
MAX_DETAILS_BYTES = 4000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _bad_request(violations: list[tuple[str, str]]) -> error_details_pb2.BadRequest:
    """The first violations that fit in MAX_DETAILS_BYTES, each field and reason cut to MAX_VIOLATION_CHARS."""
    details, size = error_details_pb2.BadRequest(), 0
    for field, reason in violations:
        violation = error_details_pb2.BadRequest.FieldViolation(field=_cut(field, MAX_VIOLATION_CHARS),
                                                                description=_cut(reason, MAX_VIOLATION_CHARS))
        size += violation.ByteSize() + 4
        if size > MAX_DETAILS_BYTES and details.field_violations:
            break
        details.field_violations.append(violation)
    return details


def _internal_status() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"internal error (request id {request_id_var.get()})")


def status_for(error: DomainError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error (also used for per-message errors inside streams). An unmapped
    one is our bug: logged, and the caller reads only the request id, as for any other exception."""
    code = status_code_for(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("unmapped domain error %s", type(error).__name__, exc_info=error)
        return _internal_status()
    status = status_pb2.Status(code=code.value[0], message=_cut(error.message, MAX_STATUS_MESSAGE_CHARS))
    if isinstance(error, InvalidInput):
        packed = any_pb2.Any()
        packed.Pack(_bad_request(error.violations))
        status.details.append(packed)
    return status


class ServiceInterceptor(grpc.ServerInterceptor):
    def __init__(self, verifier: identity.TokenVerifier, api_key: str, ops_api_key: str, *,
                 gateway_secret: str = "", direct_auth_rate_per_minute: int = 0):
        """`gateway_secret` tells calls forwarded by Envoy from direct ones; `direct_auth_rate_per_minute` (0 =
        off) limits the `auth` rate class per peer for direct calls (see services.common.direct_calls)."""
        self._verifier = verifier
        self._all_keys = (api_key, ops_api_key)
        self._ops_keys = (ops_api_key,)
        self._table = access_table()
        self._wrapped: dict[str, tuple] = {}  # method path -> (grpc's handler, ours around it): see intercept_service
        self._gateway_secret = gateway_secret
        self._direct_limit = (direct_calls.PeerRateLimit(direct_auth_rate_per_minute)
                              if direct_auth_rate_per_minute > 0 else None)

    @classmethod
    def from_settings(cls, verifier: identity.TokenVerifier, settings) -> "ServiceInterceptor":
        return cls(verifier, settings.api_key, settings.ops_api_key, gateway_secret=settings.gateway_secret,
                   direct_auth_rate_per_minute=settings.direct_auth_rate_per_minute)

    def _authenticate(self, entry: MethodAccess, metadata: dict[str, str]) -> identity.Caller | None:
        route_keys = self._ops_keys if entry.ops_key_only else self._all_keys
        identity.check_api_key(metadata.get("x-api-key"), route_keys, self._all_keys)
        token = identity.bearer_token(metadata)
        if token is None:
            if entry.public:
                return None
            raise Unauthenticated("missing bearer token (authorization header or access_token cookie)")
        caller = self._verifier.verify(token)
        if not entry.public:
            identity.authorize(caller, entry.roles, entry.method)
        return caller

    def intercept_service(self, continuation, handler_call_details):
        """Runs for every call: the wrapped handler is built once per method (grpc hands back the same handler)."""
        handler = continuation(handler_call_details)
        cached = self._wrapped.get(handler_call_details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        entry = self._table.get(handler_call_details.method)
        if handler is None or entry is None:  # health, reflection: open, unmetered
            return handler
        wrapped = self._wrap_handler(entry, handler)
        self._wrapped[handler_call_details.method] = (handler, wrapped)
        return wrapped

    def _wrap_handler(self, entry: MethodAccess, handler):
        deserializer = _tolerant(entry, handler.request_deserializer)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(entry, handler.unary_unary), deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(entry, handler.stream_unary), deserializer, handler.response_serializer)
        behaviour = handler.unary_stream or handler.stream_stream
        factory = grpc.unary_stream_rpc_method_handler if handler.unary_stream else grpc.stream_stream_rpc_method_handler
        return factory(self._wrap_stream(entry, behaviour), deserializer, handler.response_serializer)

    def _begin(self, entry: MethodAccess, context) -> tuple:
        metadata = {key: value for key, value in context.invocation_metadata() if isinstance(value, str)}
        through_gateway = direct_calls.via_gateway(metadata, self._gateway_secret)
        request_id = direct_calls.request_id(metadata.get("x-request-id"), through_gateway)
        tokens = (request_id_var.set(request_id), identity.set_current_caller(None),
                  shadow.detect(metadata, through_gateway))
        if self._direct_limit is not None and entry.rate == "auth" and not through_gateway:
            self._direct_limit.check(context.peer())
        identity.set_current_caller(self._authenticate(entry, metadata))
        return tokens

    def _failure(self, entry: MethodAccess, error: Exception) -> status_pb2.Status:
        """The status for an error raised while serving; servicers raise domain errors, never call abort."""
        code = status_code_for(error) if isinstance(error, DomainError) else grpc.StatusCode.INTERNAL
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", entry.method, exc_info=error)
            return _internal_status()
        if not isinstance(error, InvalidInput):
            log.info("%s rejected: %s %s", entry.method, code.name, _cut(error.message, MAX_STATUS_MESSAGE_CHARS))
        return status_for(error)

    def _finish(self, entry: MethodAccess, meters: dict, started: float, tokens,
                status: status_pb2.Status | None) -> None:
        """`meters`: the method's metric children by (code, traffic), filled as they first occur (`.labels()` takes
        a lock and builds a key on every call)."""
        code = grpc.StatusCode.OK if status is None else _CODES[status.code]
        traffic = shadow.traffic() if tokens else shadow.LIVE
        found = meters.get((code, traffic))
        if found is None:
            found = meters[(code, traffic)] = (
                GRPC_LATENCY.labels(entry.service, entry.method, traffic),
                GRPC_REQUESTS.labels(entry.service, entry.method, code.name, traffic))
        found[0].observe(time.perf_counter() - started)
        found[1].inc()
        if tokens:
            shadow.reset(tokens[2])
            identity.reset_current_caller(tokens[1])
            request_id_var.reset(tokens[0])

    def _wrap_unary(self, entry: MethodAccess, behaviour):
        meters: dict = {}

        def wrapped(request, context):
            started, tokens, failure = time.perf_counter(), None, None
            try:
                tokens = self._begin(entry, context)
                return behaviour(_checked(entry, request), context)
            except Exception as error:  # noqa: BLE001 - every error becomes a status, none escapes unlogged
                failure = self._failure(entry, error)
            finally:
                self._finish(entry, meters, started, tokens, failure)
            context.abort_with_status(rpc_status.to_status(failure))
        return wrapped

    def _wrap_stream(self, entry: MethodAccess, behaviour):
        meters: dict = {}

        def wrapped(request, context):
            started, tokens, failure = time.perf_counter(), None, None
            try:
                tokens = self._begin(entry, context)
                yield from behaviour(_checked(entry, request), context)
            except Exception as error:  # noqa: BLE001
                failure = self._failure(entry, error)
            finally:
                self._finish(entry, meters, started, tokens, failure)
            if failure is not None:
                context.abort_with_status(rpc_status.to_status(failure))
        return wrapped


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _Undecodable:
    """Stands in for a request grpc could not parse. Left to grpc, bad bytes (e.g. a string field that is not
    UTF-8) become INTERNAL "Exception deserializing request!"; this way the caller gets INVALID_ARGUMENT naming
    the message type, after the API key and token checks."""

    def __init__(self, error: InvalidInput):
        self.error = error


def _tolerant(entry: MethodAccess, deserializer):
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the caller's bytes, reported below
            return _Undecodable(_undecodable_error(entry, exc))
    return parse


def _checked(entry: MethodAccess, request):
    """A unary request that did not parse raises its InvalidInput. In a client stream an unparsable message
    arrives as its InvalidInput instance instead of a message, so the servicer answers that message alone and the
    stream goes on (raising here would end the whole stream)."""
    if entry.client_streaming:
        return (message.error if isinstance(message, _Undecodable) else message for message in request)
    return _checked_one(request)


def _checked_one(message):
    if isinstance(message, _Undecodable):
        raise message.error
    return message


_LIBRARY_PREFIX = "Error parsing message"  # upb: "Error parsing message with type 'T': <reason>"
_MAX_REASON = 120


def _undecodable_error(entry: MethodAccess, error: Exception) -> InvalidInput:
    """INVALID_ARGUMENT naming the message type and protobuf's own short reason (e.g. "String field had bad
    UTF-8"); the library does not name the field, and the caller's bytes are never echoed (reason capped)."""
    try:
        name = descriptor_pool.Default().FindMethodByName(f"{entry.service}.{entry.method}").input_type.full_name
    except KeyError:
        name = "the request message"
    text = str(error)
    reason = text.partition("': ")[2] if text.startswith(_LIBRARY_PREFIX) else text
    reason = reason[:_MAX_REASON]
    return InvalidInput("request", f"cannot be parsed as {name}" + (f": {reason}" if reason else ""))
