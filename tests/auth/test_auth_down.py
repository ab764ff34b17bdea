"""Chaos (issue 13): auth down. The chosen behaviour of every other service's verifier: a caller whose session was
confirmed keeps working for `SESSION_CHECK_SECONDS` (cached), then gets UNAVAILABLE (NotReady, retry later) — never
accepted on stale knowledge for longer, never INTERNAL."""
from __future__ import annotations

import time

import pytest

from services.common.auth_client import remote_verifier
from services.common.errors import NotReady
from tests.auth.conftest import auth_settings, start_auth


def test_cached_sessions_then_unavailable(tmp_path):
    settings = auth_settings(tmp_path, f"sqlite:///{tmp_path / 'users.db'}", SESSION_CHECK_SECONDS="2",
                             JWKS_CACHE_SECONDS="2")
    app, host, bound = start_auth(settings)
    try:
        app.accounts.create_admin("boss", "Correct-Horse-42")
        token = app.accounts.login("boss", "Correct-Horse-42")[0].token
        verifier = remote_verifier(bound)
        assert verifier.verify(token).subject == "boss"
        confirmed_at = time.monotonic()  # the session check is cached from here for 2 s
    finally:
        host.stop(0)
        app.close()
    if time.monotonic() - confirmed_at < 1.5:
        assert verifier.verify(token).subject == "boss"  # auth is down: the confirmed session is still cached
    while time.monotonic() - confirmed_at < 2 + 3:
        try:
            verifier.verify(token)
        except NotReady as error:
            assert "unavailable" in str(error) or "cannot fetch" in str(error)
            assert time.monotonic() - confirmed_at >= 1.9  # not before the cache window ends
            return
        time.sleep(0.1)
    pytest.fail("still accepted 5 s after auth went down (SESSION_CHECK_SECONDS is 2)")
