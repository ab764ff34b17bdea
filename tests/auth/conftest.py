"""Auth fixtures: a real in-process auth server per store backend (SQLite and PostgreSQL), a channel to it, and
helpers to register, approve, log in and forge tokens. Argon2 runs with cheap parameters here to stay fast."""
from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
import uuid

import grpc
import jwt
import pytest
import sqlalchemy as sa

from churn.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from services.auth.app import AuthApp, build, start
from services.common.settings import Settings
from tests.pg import own_database

CHEAP_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024"}
PASSWORD = "Correct-Horse-42"
SIGNING_KEY_SECRET = "signing-" + secrets.token_hex(8)  # one per run: auth replicas on one store share it


def auth_settings(workdir, database_url: str, **extra: str) -> Settings:
    env = {"DATA_DIR": str(workdir), "SECRETS_DIR": str(workdir / "secrets"), "BIND_HOST": "127.0.0.1",
           "API_KEY": "client-" + secrets.token_hex(8), "OPS_API_KEY": "ops-" + secrets.token_hex(8),
           "USERS_DATABASE_URL": database_url, "KEY_PROPAGATION_SECONDS": "1", "ACCESS_TOKEN_TTL_SECONDS": "300",
           "SIGNING_KEY_SECRET": SIGNING_KEY_SECRET,
           "DIRECT_AUTH_RATE_PER_MINUTE": "0",  # these tests log in directly many times; test_direct_calls.py
           "SESSION_CHECK_SECONDS": "1", "JWKS_CACHE_SECONDS": "1", **CHEAP_ARGON2, **extra}
    return Settings.from_env(env)


def unique(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclasses.dataclass
class AuthEnv:
    settings: Settings  # with the real bound ports filled in
    app: AuthApp
    stub: auth_pb2_grpc.AuthServiceStub
    channel: grpc.Channel
    admin_token: str

    def md(self, token: str | None = None, key: str | None = "client") -> tuple:
        metadata = []
        if key == "client":
            metadata.append(("x-api-key", self.settings.api_key))
        elif key == "ops":
            metadata.append(("x-api-key", self.settings.ops_api_key))
        elif key is not None:
            metadata.append(("x-api-key", key))
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        return tuple(metadata)

    def register(self, username: str, password: str = PASSWORD, role=common_pb2.ROLE_UNSPECIFIED,
                 token: str | None = None):
        return self.stub.Register(auth_pb2.RegisterRequest(username=username, password=password, role=role),
                                  metadata=self.md(token), timeout=10)

    def approve(self, username: str, approve: bool = True):
        return self.stub.ApproveUser(auth_pb2.ApproveUserRequest(username=username, approve=approve),
                                     metadata=self.md(self.admin_token, key="ops"), timeout=10)

    def login(self, username: str, password: str = PASSWORD) -> auth_pb2.LoginResponse:
        return self.stub.Login(auth_pb2.LoginRequest(username=username, password=password), metadata=self.md(),
                               timeout=10)

    def approved_user(self, role=common_pb2.ROLE_AGENT) -> tuple[str, str]:
        """A new approved user (created by the admin) and its token."""
        username = unique(common_pb2.Role.Name(role).removeprefix("ROLE_").lower())
        self.register(username, role=role, token=self.admin_token)
        return username, self.login(username).access_token

    def verify(self, token: str, key: str | None = "client") -> auth_pb2.VerifySessionResponse:
        return self.stub.VerifySession(auth_pb2.VerifySessionRequest(), metadata=self.md(token, key), timeout=10)

    def sign(self, claims: dict, kid: str | None = None) -> str:
        """A token signed with auth's real current key (for expired / wrong aud / wrong iss cases)."""
        current_kid, key = self.app.keys.signing_key()
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid or current_kid})

    def claims(self, subject: str, role: str = "agent", **overrides) -> dict:
        now = int(time.time())
        base = {"iss": self.settings.jwt_issuer, "aud": self.settings.jwt_audience, "sub": subject, "role": role,
                "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
        base.update(overrides)
        return base


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_parts(header: dict, claims: dict) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"


def start_auth(settings: Settings):
    app = build(settings)
    host = start(app, port=0, http_port=0)
    bound = dataclasses.replace(settings, auth_port=host.port, auth_http_port=host.http_port,
                                jwks_url=f"http://127.0.0.1:{host.http_port}/.well-known/jwks.json")
    return app, host, bound


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request, tmp_path_factory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('auth-sqlite') / 'users.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def fresh_database_url(database_url, tmp_path):
    """An empty database on the same backend (store and key-ring tests own it; the shared server is untouched)."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with own_database(database_url, url.database) as fresh:
        yield fresh


@pytest.fixture(scope="session")
def auth(database_url, tmp_path_factory) -> AuthEnv:
    settings = auth_settings(tmp_path_factory.mktemp("auth"), database_url)
    app, host, bound = start_auth(settings)
    admin = unique("admin")
    app.accounts.create_admin(admin, PASSWORD)
    channel = grpc.insecure_channel(f"127.0.0.1:{host.port}")
    stub = auth_pb2_grpc.AuthServiceStub(channel)
    login = stub.Login(auth_pb2.LoginRequest(username=admin, password=PASSWORD),
                       metadata=(("x-api-key", settings.api_key),), timeout=10)
    yield AuthEnv(settings=bound, app=app, stub=stub, channel=channel, admin_token=login.access_token)
    channel.close()
    host.stop(0)
    app.close()
