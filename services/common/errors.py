"""Typed domain errors, plain Python: domain code raises these and never sees gRPC. The one server interceptor
(`services.common.interceptor`) maps each class to a status code in a single table and adds google.rpc.BadRequest
details for InvalidInput, so no handler ever builds a status by hand."""
from __future__ import annotations


class DomainError(Exception):
    """Base class, never raised itself (the interceptor treats an unmapped DomainError as our bug: INTERNAL).
    `message` is the text the caller reads."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """A caller's mistake in one named field (e.g. `customers[3].tenure`, `csv line 12: MonthlyCharges`)."""

    def __init__(self, field: str, reason: str, violations: list[tuple[str, str]] | None = None):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.violations = violations or [(field, reason)]


class NotFound(DomainError):
    pass


class AlreadyExists(DomainError):
    pass


class NotReady(DomainError):
    """The service cannot answer yet (model not loaded, dependency down): retry later."""


class FailedPrecondition(DomainError):
    pass


class Unauthenticated(DomainError):
    pass


class PermissionDenied(DomainError):
    pass


class ResourceExhausted(DomainError):
    """Too much in one request (rows, bytes): the caller must send less, not retry."""


MAX_ECHO_CHARS = 40  # a caller's value is quoted in an error message only up to this many characters


def shown(value: object) -> str:
    """A caller's value as an error message may quote it: its repr, cut to MAX_ECHO_CHARS characters (a 30 KB
    value must not come back in a status message, which travels in a size-limited header)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= MAX_ECHO_CHARS:
        return repr(value)
    return f"{text[:MAX_ECHO_CHARS]!r}… ({len(text)} characters)"
