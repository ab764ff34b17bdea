"""Domain errors are plain Python; the interceptor's one table turns them into status codes (subclasses map like
their parent, a bare DomainError is our bug and answers INTERNAL with only the request id)."""
import subprocess
import sys

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from services.common import errors
from services.common.interceptor import status_code_for, status_for
from services.common.logs import request_id_var

EXPECTED = {
    errors.InvalidInput("tenure", "must be >= 0"): grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound("user 'x' not found"): grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists("user 'x' already exists"): grpc.StatusCode.ALREADY_EXISTS,
    errors.NotReady("model not loaded"): grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition("no versions"): grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated("token expired"): grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied("admin only"): grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted("too many rows"): grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def test_errors_module_does_not_import_grpc():
    code = "import sys, services.common.errors; print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_domain_error_class_has_one_status_code():
    subclasses = {cls for cls in vars(errors).values()
                  if isinstance(cls, type) and issubclass(cls, errors.DomainError) and cls is not errors.DomainError}
    assert subclasses == {type(error) for error in EXPECTED}
    for error, code in EXPECTED.items():
        assert not hasattr(error, "code"), type(error).__name__
        assert status_code_for(error) == code
        status = status_for(error)
        assert (status.code, status.message) == (code.value[0], error.message)


def test_a_subclass_maps_like_its_parent():
    class VersionNotFound(errors.NotFound):
        pass

    assert status_code_for(VersionNotFound("version 9 not found")) == grpc.StatusCode.NOT_FOUND
    assert status_for(VersionNotFound("version 9 not found")).message == "version 9 not found"


@pytest.mark.parametrize("error", [errors.DomainError("secret detail"),
                                   type("Unmapped", (errors.DomainError,), {})("secret detail")])
def test_an_unmapped_domain_error_is_internal_naming_only_the_request_id(error):
    token = request_id_var.set("req-42")
    try:
        status = status_for(error)
    finally:
        request_id_var.reset(token)
    assert status_code_for(error) == grpc.StatusCode.INTERNAL
    assert (status.code, status.message) == (code_pb2.INTERNAL, "internal error (request id req-42)")


def test_invalid_input_keeps_fields_and_every_violation_in_bad_request():
    error = errors.InvalidInput("customers[0].tenure", "must be >= 0",
                                violations=[("customers[0].tenure", "must be >= 0"), ("customers[2].gender", "?")])
    assert (error.field, error.reason, error.message) == ("customers[0].tenure", "must be >= 0",
                                                          "customers[0].tenure: must be >= 0")
    details = error_details_pb2.BadRequest()
    assert status_for(error).details[0].Unpack(details)
    assert [(v.field, v.description) for v in details.field_violations] == error.violations
