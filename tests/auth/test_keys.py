"""Signing-key rotation: the next key is published before it signs, old tokens keep verifying, retired keys leave
the JWKS only after their last token expired. End to end on the server, and step by step with a fake clock."""
from __future__ import annotations

import json
import time
import urllib.request

import jwt
import pytest

from churn.v1 import auth_pb2
from services.auth.keys import RETIRE_MARGIN_SECONDS, KeyRing
from services.auth.users import UserStore


def _http_jwks_kids(auth) -> list[str]:
    with urllib.request.urlopen(auth.settings.jwks_url, timeout=5) as response:
        assert response.headers["Content-Type"] == "application/json"
        return [key["kid"] for key in json.loads(response.read())["keys"]]


def test_rotation_keeps_old_tokens_and_new_tokens_use_the_new_kid(auth):
    username, old_token = auth.approved_user()
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    asked = time.time()
    rotated = auth.stub.RotateKeys(auth_pb2.RotateKeysRequest(), metadata=auth.md(auth.admin_token, key="ops"),
                                   timeout=5)
    answered = time.time()
    assert rotated.signing_kid == old_kid and rotated.next_kid not in ("", old_kid)
    assert {old_kid, rotated.next_kid} <= set(rotated.published_kids)
    signs_from = rotated.next_signs_from.ToNanoseconds() / 1e9
    # the rotation happened between asking and the answer; the next key signs one propagation delay later
    propagation = auth.settings.key_propagation_seconds
    assert asked + propagation - 0.001 <= signs_from <= answered + propagation + 0.001

    # published at once (HTTP side port, where Envoy reads it), but not signing yet
    assert rotated.next_kid in _http_jwks_kids(auth)
    assert jwt.get_unverified_header(auth.login(username).access_token)["kid"] == old_kid

    time.sleep(max(0.0, signs_from - time.time()) + 0.05)
    new_token = auth.login(username).access_token
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.next_kid
    assert auth.verify(old_token).username == username  # the retired key still verifies its tokens
    assert auth.verify(new_token).username == username
    assert {old_kid, rotated.next_kid} <= set(_http_jwks_kids(auth))


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ring(fresh_database_url):
    store = UserStore(fresh_database_url)
    store.migrate()
    clock = Clock()
    yield KeyRing(store, propagation_seconds=10, access_ttl_seconds=100, secret="test-secret", refresh_seconds=0,
                  clock=clock), clock, store
    store.close()


def test_key_lifecycle_with_a_fake_clock(ring):
    keys, clock, store = ring
    keys.ensure()
    first = keys.status().signing_kid
    assert keys.status().published_kids == [first]

    rotated = keys.rotate()
    second = rotated.next_kid
    assert (rotated.signing_kid, rotated.next_signs_from) == (first, clock.now + 10)
    assert keys.signing_key()[0] == first and keys.key_for(second) is not None  # published, not signing

    clock.now += 10
    assert keys.signing_key()[0] == second
    assert keys.key_for(first) is not None  # retired, its tokens are still valid

    clock.now += 100 + RETIRE_MARGIN_SECONDS - 1
    assert keys.key_for(first) is not None
    clock.now += 2
    assert keys.key_for(first) is None  # every token it signed has expired
    assert [k["kid"] for k in keys.jwks()["keys"]] == [second]

    keys.rotate()  # pruning happens on rotation
    assert first not in [k.kid for k in store.list_keys()]


def test_service_token_keeps_its_key_published(ring):
    keys, clock, store = ring
    keys.ensure()
    signer = keys.status().signing_kid
    store.add_service_token("jti-keep-" + signer, "outbox", signer, clock.now, clock.now + 10_000)
    keys.rotate()
    clock.now += 10 + 100 + RETIRE_MARGIN_SECONDS + 5
    assert keys.key_for(signer) is not None  # a live service token still needs it
    store.revoke_service_tokens("outbox")
    keys._load(force=True)
    assert keys.key_for(signer) is None  # revoked: nothing left to verify with it
