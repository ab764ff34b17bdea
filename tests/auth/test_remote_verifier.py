"""The verifier every other service uses (services/common/auth_client.remote_verifier): JWKS over auth's HTTP side
port plus a cached VerifySession. It must accept good tokens, follow rotations, and refuse a revoked user or
service token within `session_check_seconds`."""
from __future__ import annotations

import time

import jwt
import pytest

from churn.v1 import auth_pb2
from services.common import identity
from services.common.auth_client import remote_verifier
from services.common.errors import PermissionDenied, Unauthenticated
from tests.auth.conftest import unique, unsigned_parts
from tests.clock import OffsetClock


def test_a_revoked_user_is_refused_once_the_session_check_window_has_passed(auth, monkeypatch):
    """The session check is cached for `session_check_seconds` (a fake clock moves past it: no sleep, no race)."""
    clock = OffsetClock(monkeypatch, identity)
    verifier = remote_verifier(auth.settings)
    username, token = auth.approved_user()
    caller = verifier.verify(token)
    assert (caller.subject, caller.role) == (username, "agent")

    auth.approve(username, approve=False)
    clock.advance(auth.settings.session_check_seconds)
    with pytest.raises(PermissionDenied, match="is not approved"):
        verifier.verify(token)


def test_refuses_forged_tokens_without_asking_auth(auth):
    verifier = remote_verifier(auth.settings)
    username, _ = auth.approved_user()
    forged = unsigned_parts({"alg": "none", "kid": auth.app.keys.signing_key()[0]}, auth.claims(username)) + "."
    with pytest.raises(Unauthenticated, match="not accepted"):
        verifier.verify(forged)


def test_follows_a_rotation(auth):
    verifier = remote_verifier(auth.settings)
    username, old_token = auth.approved_user()
    verifier.verify(old_token)  # JWKS fetched and cached now
    rotated = auth.stub.RotateKeys(auth_pb2.RotateKeysRequest(), metadata=auth.md(auth.admin_token, key="ops"),
                                   timeout=5)
    time.sleep(max(0.0, rotated.next_signs_from.ToNanoseconds() / 1e9 - time.time()) + 0.05)
    new_token = auth.login(username).access_token
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.next_kid
    assert verifier.verify(new_token).subject == username
    assert verifier.verify(old_token).subject == username


def test_revoked_service_token_is_refused_once_the_window_has_passed(auth, monkeypatch):
    clock = OffsetClock(monkeypatch, identity)
    verifier = remote_verifier(auth.settings)
    name = unique("svc")
    token = auth.app.accounts.mint_service_token(name, ttl_seconds=3600).token
    assert verifier.verify(token).role == "service"
    auth.app.accounts.revoke_service_tokens(name)
    clock.advance(auth.settings.session_check_seconds)
    with pytest.raises(Unauthenticated):
        verifier.verify(token)
