"""The security set: every forged or misused credential is refused with UNAUTHENTICATED or PERMISSION_DENIED and a
message that says why — never INTERNAL, never OK."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from churn.v1 import auth_pb2, common_pb2
from tests.auth.conftest import b64url, unique, unsigned_parts


def _alg_none(auth, username):
    return unsigned_parts({"alg": "none", "typ": "JWT", "kid": auth.app.keys.signing_key()[0]},
                          auth.claims(username)) + "."


def _hs256_with_public_key(auth, username):
    """Alg confusion: HMAC keyed with the published public key, which a naive verifier would accept."""
    kid = auth.app.keys.signing_key()[0]
    jwk = next(k for k in json.loads(auth.app.keys.jwks_bytes())["keys"] if k["kid"] == kid)
    public_pem = jwt.PyJWK(jwk).key.public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = unsigned_parts({"alg": "HS256", "typ": "JWT", "kid": kid}, auth.claims(username, role="admin"))
    signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def _expired(auth, username):
    now = int(time.time())
    return auth.sign(auth.claims(username, iat=now - 600, exp=now - 300))


def _wrong_audience(auth, username):
    return auth.sign(auth.claims(username, aud="someone-else"))


def _wrong_issuer(auth, username):
    return auth.sign(auth.claims(username, iss="https://evil.example"))


def _tampered(auth, username):
    """A real token whose payload was edited (role → admin) after signing."""
    header, payload, signature = auth.login(username).access_token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


def _unknown_kid(auth, username):
    stranger = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(auth.claims(username), stranger, algorithm="ES256", headers={"kid": "not-a-published-kid"})


def _foreign_key_known_kid(auth, username):
    """Signed by an attacker's key but naming auth's real kid: the signature check must fail."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(auth.claims(username), stranger, algorithm="ES256",
                      headers={"kid": auth.app.keys.signing_key()[0]})


def _garbage(auth, username):
    return "not.a.jwt"


FORGERIES = {
    "alg_none": (_alg_none, "algorithm 'none' is not accepted"),
    "hs256_alg_confusion": (_hs256_with_public_key, "algorithm 'HS256' is not accepted"),
    "expired": (_expired, "token has expired"),
    "wrong_audience": (_wrong_audience, "audience"),
    "wrong_issuer": (_wrong_issuer, "issuer"),
    "tampered_payload": (_tampered, "invalid token"),
    "unknown_kid": (_unknown_kid, "unknown key"),
    "foreign_key_known_kid": (_foreign_key_known_kid, "invalid token"),
    "malformed": (_garbage, "malformed token"),
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_forged_tokens_are_unauthenticated(auth, case):
    make, reason = FORGERIES[case]
    username, _ = auth.approved_user()
    token = make(auth, username)
    with pytest.raises(grpc.RpcError) as refused:
        auth.verify(token)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    assert reason in refused.value.details()


def test_forged_admin_token_cannot_reach_admin_rpcs(auth):
    username, _ = auth.approved_user()
    with pytest.raises(grpc.RpcError) as refused:
        auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=auth.md(_hs256_with_public_key(auth, username),
                                                                         key="ops"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_signed_token_with_stale_role_is_refused(auth):
    """A validly signed token claiming a role the user does not hold (e.g. minted before a change)."""
    username, _ = auth.approved_user()
    with pytest.raises(grpc.RpcError) as refused:
        auth.verify(auth.sign(auth.claims(username, role="admin")))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no longer matches" in refused.value.details()


@pytest.mark.parametrize("rpc,request_", [("ListUsers", auth_pb2.ListUsersRequest()),
                                          ("ApproveUser", auth_pb2.ApproveUserRequest(username="abc", approve=True)),
                                          ("RotateKeys", auth_pb2.RotateKeysRequest())])
def test_agent_cannot_call_admin_rpcs(auth, rpc, request_):
    _, token = auth.approved_user()
    with pytest.raises(grpc.RpcError) as refused:
        getattr(auth.stub, rpc)(request_, metadata=auth.md(token, key="ops"), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"role 'agent' may not call {rpc}" in refused.value.details()


def test_unapproved_users_old_token_is_refused(auth):
    username, token = auth.approved_user()
    auth.approve(username, approve=False)
    with pytest.raises(grpc.RpcError) as refused:
        auth.verify(token)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "is not approved" in refused.value.details()


@pytest.mark.parametrize("key,code,reason", [
    (None, grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
    ("wrong-key", grpc.StatusCode.UNAUTHENTICATED, "API key is not valid"),
    ("", grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
])
def test_missing_or_wrong_api_key(auth, key, code, reason):
    with pytest.raises(grpc.RpcError) as refused:
        auth.stub.Login(auth_pb2.LoginRequest(username="abc", password="x"), metadata=auth.md(key=key), timeout=5)
    assert (refused.value.code(), reason in refused.value.details()) == (code, True)


def test_ops_route_refuses_client_key(auth):
    with pytest.raises(grpc.RpcError) as refused:
        auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=auth.md(auth.admin_token, key="client"),
                            timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "ops API key" in refused.value.details()


def test_missing_token_on_protected_rpc(auth):
    with pytest.raises(grpc.RpcError) as refused:
        auth.verify(None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing bearer token" in refused.value.details()


@pytest.mark.parametrize("role,by", [("admin", "anonymous"), ("admin", "agent"), ("service", "anonymous"),
                                     ("service", "admin"), ("reloader", "anonymous"), ("reloader", "admin")])
def test_register_privileged_roles_is_denied(auth, role, by):
    token = {"anonymous": None, "agent": auth.approved_user()[1], "admin": auth.admin_token}[by]
    username = unique("climber")
    with pytest.raises(grpc.RpcError) as refused:
        auth.register(username, role={"admin": common_pb2.ROLE_ADMIN, "service": common_pb2.ROLE_SERVICE,
                                      "reloader": common_pb2.ROLE_RELOADER}[role], token=token)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ("only an admin" if role == "admin" else "cannot be registered") in refused.value.details()
    assert auth.app.store.get_user(username) is None
