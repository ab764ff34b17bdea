"""Typed domain errors. Domain code raises these; one server interceptor maps them to gRPC status codes
(with google.rpc.BadRequest details for InvalidInput), so no handler ever builds a status by hand."""
from __future__ import annotations

import grpc


class DomainError(Exception):
    """Base class: `code` is the gRPC status the caller sees, `message` the text it reads."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """A caller's mistake in one named field (e.g. `customers[3].tenure`, `csv line 12: MonthlyCharges`)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, reason: str, violations: list[tuple[str, str]] | None = None):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.violations = violations or [(field, reason)]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class NotReady(DomainError):
    """The service cannot answer yet (model not loaded, dependency down): retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    """Too much in one request (rows, bytes): the caller must send less, not retry."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
