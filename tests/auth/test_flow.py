"""The acceptance flow and every RPC's contract, on a real server, for each store backend."""
from __future__ import annotations

import json
import time

import grpc
import jwt
import pytest

from churn.v1 import auth_pb2, common_pb2
from tests.auth.conftest import PASSWORD, auth_settings, start_auth, unique


def test_register_login_approve_verify(auth):
    username = unique()
    registered = auth.register(username).user
    assert (registered.username, registered.role, registered.approved) == (username, common_pb2.ROLE_AGENT, False)

    with pytest.raises(grpc.RpcError) as refused:
        auth.login(username)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not approved" in refused.value.details()

    pending = auth.stub.ListUsers(auth_pb2.ListUsersRequest(pending_only=True),
                                  metadata=auth.md(auth.admin_token, key="ops"), timeout=5)
    assert username in [u.username for u in pending.users]

    assert auth.approve(username).user.approved is True
    login = auth.login(username)
    assert login.token_type == "Bearer" and login.role == common_pb2.ROLE_AGENT
    assert 0 < login.expires_in <= 300
    assert abs(login.expires_at.seconds - (time.time() + login.expires_in)) < 5

    session = auth.verify(login.access_token)
    assert (session.username, session.role, session.approved) == (username, common_pb2.ROLE_AGENT, True)
    assert session.expires_at.seconds == login.expires_at.seconds


def test_token_claims_and_header(auth):
    username, token = auth.approved_user()
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256" and header["kid"] in auth.app.keys.status().published_kids
    assert set(claims) == {"iss", "aud", "sub", "role", "iat", "exp", "jti"}
    assert (claims["sub"], claims["role"], claims["iss"], claims["aud"]) == (
        username, "agent", auth.settings.jwt_issuer, auth.settings.jwt_audience)
    assert claims["exp"] - claims["iat"] == auth.settings.access_token_ttl_seconds


def test_login_sets_http_only_cookie(auth):
    username, _ = auth.approved_user()
    reply, call = auth.stub.Login.with_call(auth_pb2.LoginRequest(username=username, password=PASSWORD),
                                            metadata=auth.md(), timeout=5)
    cookie = dict(call.initial_metadata())["set-cookie"]
    assert cookie == (f"access_token={reply.access_token}; HttpOnly; SameSite=Strict; Path=/; "
                      f"Max-Age={reply.expires_in}")
    # the cookie alone authenticates (browser / REST clients through Envoy)
    session = auth.stub.VerifySession(auth_pb2.VerifySessionRequest(), timeout=5, metadata=(
        ("x-api-key", auth.settings.api_key), ("cookie", f"theme=dark; access_token={reply.access_token}")))
    assert session.username == username


def test_secure_cookie_setting(tmp_path):
    settings = auth_settings(tmp_path, f"sqlite:///{tmp_path / 'users.db'}", SECURE_COOKIE="true")
    app, host, bound = start_auth(settings)
    try:
        app.accounts.create_admin("root", PASSWORD)
        with grpc.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            from churn.v1 import auth_pb2_grpc
            _, call = auth_pb2_grpc.AuthServiceStub(channel).Login.with_call(
                auth_pb2.LoginRequest(username="root", password=PASSWORD),
                metadata=(("x-api-key", bound.api_key),), timeout=5)
        assert dict(call.initial_metadata())["set-cookie"].endswith("; HttpOnly; SameSite=Strict; Path=/; "
                                                                  f"Max-Age={bound.access_token_ttl_seconds}; Secure")
    finally:
        host.stop(0)
        app.close()


def test_wrong_password_and_unknown_user_look_the_same(auth):
    username, _ = auth.approved_user()
    errors = []
    for name, password in ((username, "Wrong-Password-1"), (unique("ghost"), "Wrong-Password-1")):
        with pytest.raises(grpc.RpcError) as failed:
            auth.login(name, password)
        errors.append((failed.value.code(), failed.value.details()))
    assert errors[0] == errors[1] == (grpc.StatusCode.UNAUTHENTICATED, "invalid username or password")


def test_admin_registers_approved_admin(auth):
    username = unique("boss")
    user = auth.register(username, role=common_pb2.ROLE_ADMIN, token=auth.admin_token).user
    assert (user.role, user.approved) == (common_pb2.ROLE_ADMIN, True)
    token = auth.login(username).access_token
    listed = auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=auth.md(token, key="ops"), timeout=5)
    assert {username, } <= {u.username for u in listed.users}


def test_unapprove_revokes_existing_tokens_at_once(auth):
    username, token = auth.approved_user()
    assert auth.verify(token).approved
    auth.approve(username, approve=False)
    with pytest.raises(grpc.RpcError) as refused:
        auth.verify(token)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"user {username!r} is not approved" in refused.value.details()
    auth.approve(username)
    assert auth.verify(token).username == username


def test_last_admin_cannot_be_unapproved(tmp_path):
    settings = auth_settings(tmp_path, f"sqlite:///{tmp_path / 'users.db'}")
    app, host, _ = start_auth(settings)
    try:
        app.accounts.create_admin("root", PASSWORD)
        from services.common.errors import FailedPrecondition
        with pytest.raises(FailedPrecondition):
            app.accounts.approve("root", False)
    finally:
        host.stop(0)
        app.close()


def test_approve_unknown_user_is_not_found(auth):
    with pytest.raises(grpc.RpcError) as missing:
        auth.approve(unique("nobody"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_get_jwks_is_json_with_public_keys_only(auth):
    reply = auth.stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=auth.md(), timeout=5)
    assert reply.jwks.content_type == "application/json"
    document = json.loads(reply.jwks.data)
    assert document["keys"]
    for key in document["keys"]:
        assert key["kty"] == "EC" and key["alg"] == "ES256" and key["use"] == "sig" and key["kid"]
        assert "d" not in key  # never the private part


def test_service_token_verifies_and_is_revocable(auth):
    name = unique("svc")
    token = auth.app.accounts.mint_service_token(name, ttl_seconds=3600)
    session = auth.verify(token.token)
    assert (session.username, session.role, session.approved) == (f"service:{name}", common_pb2.ROLE_SERVICE, True)
    assert auth.app.accounts.revoke_service_tokens(name) == 1
    with pytest.raises(grpc.RpcError) as revoked:
        auth.verify(token.token)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in revoked.value.details()


def test_a_reloader_token_is_a_revocable_service_principal_that_can_do_nothing_at_auth(auth):
    """Monitoring's own credential: a `reloader` service token. Auth knows it (VerifySession, so the other
    services' session check passes) and refuses it everywhere else: no user listing, no approval, no admin."""
    from services.common.errors import InvalidInput

    name = unique("mon")
    token = auth.app.accounts.mint_service_token(name, ttl_seconds=3600, role="reloader")
    assert jwt.decode(token.token, options={"verify_signature": False})["role"] == "reloader"
    session = auth.verify(token.token)
    assert (session.username, session.role, session.approved) == (f"service:{name}", common_pb2.ROLE_RELOADER, True)
    victim = unique("victim")
    auth.register(victim)
    for call in (lambda md: auth.stub.ApproveUser(auth_pb2.ApproveUserRequest(username=victim, approve=True),
                                                  metadata=md, timeout=5),
                 lambda md: auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=md, timeout=5)):
        with pytest.raises(grpc.RpcError) as refused:
            call(auth.md(token.token, key="ops"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "role 'reloader' may not call" in refused.value.details()
    assert auth.app.store.get_user(victim).approved is False
    assert auth.app.accounts.revoke_service_tokens(name) == 1
    with pytest.raises(grpc.RpcError) as revoked:
        auth.verify(token.token)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(InvalidInput) as bad:
        auth.app.accounts.mint_service_token(name, role="admin")  # never an admin (or agent) token this way
    assert bad.value.field == "role"


def test_metrics_count_logins_by_outcome(auth):
    from prometheus_client import REGISTRY

    def value(outcome):
        return REGISTRY.get_sample_value("churn_auth_logins_total", {"outcome": outcome}) or 0.0

    before_ok, before_bad = value("ok"), value("bad_credentials")
    username, _ = auth.approved_user()
    with pytest.raises(grpc.RpcError):
        auth.login(username, "Wrong-Password-1")
    assert (value("ok"), value("bad_credentials")) == (before_ok + 1, before_bad + 1)
    # the active-users gauge reads the store of the last app built in this process: checked per process, exactly,
    # in tests/auth/test_process.py
