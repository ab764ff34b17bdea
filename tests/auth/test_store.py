"""The users store on each backend (SQLite and PostgreSQL), from an empty database."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from services.auth.users import MIGRATIONS, UserStore
from services.common.errors import AlreadyExists, NotFound


@pytest.fixture
def store(fresh_database_url):
    store = UserStore(fresh_database_url)
    yield store
    store.close()


def test_migrations_are_recorded_and_idempotent(store):
    latest = MIGRATIONS[-1][0]
    assert store.migrate() == latest
    assert store.migrate() == latest  # a second replica starting finds nothing to do
    assert store.schema_version() == latest
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"auth_schema_version", "users", "service_tokens", "signing_keys"} <= tables


def test_sqlite_runs_in_wal_mode(tmp_path):
    store = UserStore(f"sqlite:///{tmp_path / 'nested' / 'users.db'}")  # the folder is created too
    try:
        store.migrate()
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.close()


def test_users_crud(store):
    store.migrate()
    created = store.create_user("alice", "$argon2id$fake", "agent", approved=False)
    assert created.approved is False
    with pytest.raises(AlreadyExists, match="username: user 'alice' already exists"):
        store.create_user("alice", "$argon2id$other", "admin", approved=True)
    store.create_user("bob", "$argon2id$fake", "admin", approved=True)
    assert [u.username for u in store.list_users()] == ["alice", "bob"]
    assert [u.username for u in store.list_users(pending_only=True)] == ["alice"]
    assert store.set_approved("alice", True).approved is True
    assert store.get_user("alice").approved is True
    assert store.get_user("carol") is None
    with pytest.raises(NotFound):
        store.set_approved("carol", True)
    assert store.count_users(approved=True) == 2 and store.count_users(role="admin") == 1
    store.set_password_hash("alice", "$argon2id$new")
    assert store.get_user("alice").password_hash == "$argon2id$new"


def test_service_tokens(store):
    store.migrate()
    store.add_service_token("j1", "outbox", "k1", 100.0, 200.0)
    store.add_service_token("j2", "outbox", "k2", 100.0, 300.0)
    store.add_service_token("j3", "loadtest", "k2", 100.0, 400.0)
    assert store.service_token_expiry_by_kid() == {"k1": 200.0, "k2": 400.0}
    assert store.revoke_service_tokens("outbox") == 2
    assert store.revoke_service_tokens("outbox") == 0
    assert store.get_service_token("j1").revoked_at is not None
    assert store.get_service_token("j3").revoked_at is None
    assert store.service_token_expiry_by_kid() == {"k2": 400.0}
    assert store.get_service_token("nope") is None


def test_full_app_shares_keys_between_replicas(fresh_database_url, tmp_path):
    """Two auth apps on one store publish the same JWKS and accept each other's tokens."""
    from services.auth.app import build
    from tests.auth.conftest import PASSWORD, auth_settings

    first = build(auth_settings(tmp_path, fresh_database_url))
    second = build(auth_settings(tmp_path, fresh_database_url))
    try:
        assert first.keys.jwks() == second.keys.jwks()
        first.accounts.create_admin("root", PASSWORD)
        token, _ = first.accounts.login("root", PASSWORD)
        caller = second.verifier().verify(token.token)
        assert (caller.subject, caller.role) == ("root", "admin")
    finally:
        first.close()
        second.close()
