"""Issue 13 item 9: `var/users.db` was 0644 and held the ES256 private keys in clear, so any local account could
mint admin tokens. Store files are now 0600 in 0700 folders, and the private keys are encrypted with
SIGNING_KEY_SECRET from the secrets folder (or the environment): a copied users database alone signs nothing."""
from __future__ import annotations

import json
import shutil
import stat

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from services.auth.keys import KeyRing, KeySecretError, new_key
from services.auth.users import KeyRecord, UserStore
from services.inference.outbox import Outbox
from services.monitoring.store import MonitoringStore
from tests.auth.conftest import auth_settings, start_auth
from tools.init_secrets import init_secrets


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def running_auth(tmp_path):
    settings = auth_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'data' / 'users.db'}")
    app, host, bound = start_auth(settings)
    yield app, bound
    host.stop(0)
    app.close()


def test_the_users_store_is_private_and_holds_no_clear_key(running_auth, tmp_path):
    app, settings = running_auth
    app.keys.signing_key()  # the key ring is in use
    db = settings.data_dir / "users.db"
    assert mode(settings.data_dir) == 0o700 and mode(db) == 0o600
    for sidecar in (settings.data_dir / "users.db-wal", settings.data_dir / "users.db-shm"):
        assert not sidecar.exists() or mode(sidecar) == 0o600
    pems = [k.private_pem for k in app.store.list_keys()]
    assert pems and all(p.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----") for p in pems)
    raw = db.read_bytes() + (settings.data_dir / "users.db-wal").read_bytes()
    assert b"BEGIN PRIVATE KEY" not in raw


def test_a_copied_database_mints_nothing(running_auth, tmp_path):
    app, settings = running_auth
    kid = app.keys.signing_key()[0]
    app.store.engine.dispose()  # checkpoint-free copy of the files as an attacker would take them
    stolen = tmp_path / "stolen"
    stolen.mkdir()
    for name in ("users.db", "users.db-wal"):
        if (settings.data_dir / name).exists():
            shutil.copy(settings.data_dir / name, stolen / name)
    store = UserStore(f"sqlite:///{stolen / 'users.db'}")
    try:
        with pytest.raises(KeySecretError):
            KeyRing(store, 10, 100, secret="")
        thief = KeyRing(store, 10, 100, secret="a guess")
        with pytest.raises(KeySecretError, match="cannot be decrypted"):
            thief.signing_key()
        record = next(k for k in store.list_keys() if k.kid == kid)
        with pytest.raises(TypeError):  # no password, no key
            serialization.load_pem_private_key(record.private_pem.encode(), None)
    finally:
        store.close()


def test_keys_stored_in_clear_by_an_older_version_are_encrypted_at_start(tmp_path):
    store = UserStore(f"sqlite:///{tmp_path / 'old.db'}")
    store.migrate()
    try:
        legacy = new_key(signs_from=0.0, now=0.0, secret="x")
        private = serialization.load_pem_private_key(legacy.private_pem.encode(), b"x")
        clear = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        store.add_key(KeyRecord(kid=legacy.kid, algorithm=legacy.algorithm, private_pem=clear,
                                public_jwk=legacy.public_jwk, created_at=0.0, signs_from=0.0))
        ring = KeyRing(store, 10, 100, secret="the-secret")
        ring.ensure()
        assert store.list_keys()[0].private_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        kid, key = ring.signing_key()
        token = jwt.encode({"sub": "a"}, key, algorithm="ES256", headers={"kid": kid})
        public = jwt.PyJWK(json.loads(legacy.public_jwk)).key
        assert jwt.decode(token, public, algorithms=["ES256"])["sub"] == "a"
        with pytest.raises(KeySecretError):
            KeyRing(store, 10, 100, secret="another").ensure()  # a wrong secret fails at start, not at login
    finally:
        store.close()


def test_other_stores_and_the_secrets_folder_are_private(tmp_path):
    monitoring = MonitoringStore(f"sqlite:///{tmp_path / 'm' / 'monitoring.db'}")
    outbox = Outbox(tmp_path / "o" / "outbox.db")
    try:
        for path in (tmp_path / "m" / "monitoring.db", tmp_path / "o" / "outbox.db"):
            assert mode(path) == 0o600 and mode(path.parent) == 0o700
    finally:
        monitoring.close()
        outbox.close()
    folder = tmp_path / "secrets"
    created = init_secrets({"SECRETS_DIR": str(folder), "DATA_DIR": str(tmp_path / "var")}, with_auth=False)
    assert {"gateway_secret", "signing_key_secret", "api_key", "ops_api_key"} <= set(created)
    assert mode(folder) == 0o700 and all(mode(p) == 0o600 for p in created.values())
