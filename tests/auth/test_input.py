"""Bad input is the caller's mistake: INVALID_ARGUMENT (or ALREADY_EXISTS) naming the field, with a
google.rpc.BadRequest detail — never INTERNAL, even for bytes that are not UTF-8 (the autouse guard in
tests/conftest.py fails any test here that causes one)."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from churn.v1 import auth_pb2
from tests.auth.conftest import PASSWORD, unique

BAD_REGISTRATIONS = {
    "empty_username": ("", PASSWORD, "username", "is required"),
    "short_username": ("ab", PASSWORD, "username", "3 to 64"),
    "long_username": ("a" * 65, PASSWORD, "username", "3 to 64"),
    "uppercase_username": ("Alice", PASSWORD, "username", "lowercase"),
    "space_in_username": ("al ice", PASSWORD, "username", "lowercase"),
    "unicode_username": ("jürgen", PASSWORD, "username", "lowercase"),
    "leading_dot_username": (".alice", PASSWORD, "username", "start with"),
    "colon_username": ("service:x", PASSWORD, "username", "lowercase"),
    "nul_in_username": ("ali\x00ce", PASSWORD, "username", "lowercase"),
    "empty_password": ("alice", "", "password", "is required"),
    "short_password": ("alice", "Ab1!", "password", "at least 10"),
    "long_password": ("alice", "Ab1!" * 100, "password", "at most 256"),
    "one_class_password": ("alice", "abcdefghijkl", "password", "two of"),
    "digits_only_password": ("alice", "123456789012", "password", "two of"),
    "password_is_username": ("alice-smith", "Alice-Smith", "password", "username"),
    "password_contains_username": ("bobby", "bobby-2024-XY", "password", "username"),
    "repetitive_password": ("alice", "aAaAaAaAaAaA", "password", "repetitive"),
}


def _bad_request_fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status details"
    fields = []
    for detail in status.details:
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            fields += [violation.field for violation in request.field_violations]
    return fields


@pytest.mark.parametrize("case", sorted(BAD_REGISTRATIONS))
def test_register_rejects_bad_input_naming_the_field(auth, case):
    username, password, field, reason = BAD_REGISTRATIONS[case]
    if username and field == "password":
        username = f"{username}{unique('')}"  # fresh name, so only the password can be at fault
        password = password.replace("Alice-Smith", username.title()).replace("bobby", username)
    with pytest.raises(grpc.RpcError) as rejected:
        auth.register(username, password)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT, rejected.value.details()
    assert rejected.value.details().startswith(f"{field}:") and reason in rejected.value.details()
    assert _bad_request_fields(rejected.value) == [field]


def test_duplicate_username_is_already_exists(auth):
    username = unique()
    auth.register(username)
    with pytest.raises(grpc.RpcError) as duplicate:
        auth.register(username, "Another-Pass-99")
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert duplicate.value.details() == f"username: user {username!r} already exists"


def test_unknown_role_value_is_invalid(auth):
    with pytest.raises(grpc.RpcError) as rejected:
        auth.register(unique(), role=42)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details().startswith("role:")


@pytest.mark.parametrize("field_number", [1, 2])  # username, password
def test_non_utf8_bytes_are_invalid_argument_not_internal(auth, field_number):
    """Proto strings cannot carry non-UTF-8 from a well-behaved client, so send the raw bytes ourselves. protobuf
    does not say which field failed, so the answer names the message and protobuf's reason."""
    raw = auth.channel.unary_unary("/churn.v1.AuthService/Register")
    good = auth_pb2.RegisterRequest(username=unique(), password=PASSWORD).SerializeToString()
    bad = good + bytes([field_number << 3 | 2, 3, 0xFF, 0xFE, 0x41])  # a later value wins for proto3 strings
    with pytest.raises(grpc.RpcError) as rejected:
        raw(bad, metadata=auth.md(), timeout=5)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details() == ("request: cannot be parsed as churn.v1.RegisterRequest: "
                                        "String field had bad UTF-8")
    assert _bad_request_fields(rejected.value) == ["request"]


def test_garbage_request_bytes_are_invalid_argument(auth):
    raw = auth.channel.unary_unary("/churn.v1.AuthService/Login")
    with pytest.raises(grpc.RpcError) as rejected:
        raw(b"\x0a\xff\xff\xff\xff\x0f", metadata=auth.md(), timeout=5)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details() == "request: cannot be parsed as churn.v1.LoginRequest: Wire format was corrupt"
    assert _bad_request_fields(rejected.value) == ["request"]


def test_undecodable_request_still_needs_the_api_key(auth):
    raw = auth.channel.unary_unary("/churn.v1.AuthService/Register")
    with pytest.raises(grpc.RpcError) as rejected:
        raw(bytes([0x0A, 2, 0xFF, 0xFE]), timeout=5)
    assert rejected.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("username,password,field", [("", PASSWORD, "username"), ("alice", "", "password"),
                                                     ("alice", "x" * 300, "password")])
def test_login_bad_input(auth, username, password, field):
    with pytest.raises(grpc.RpcError) as rejected:
        auth.login(username, password)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details().startswith(f"{field}:")


@pytest.mark.parametrize("username", ["", "Bad Name", "x" * 100])
def test_approve_bad_username_is_invalid(auth, username):
    with pytest.raises(grpc.RpcError) as rejected:
        auth.approve(username)
    assert rejected.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rejected.value.details().startswith("username:")

