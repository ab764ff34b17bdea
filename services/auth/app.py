"""Wiring: settings → store (migrated) → key ring → accounts → gRPC server. Used by `python -m services.auth`,
its CLI commands and the in-process contract tests, so all three run the same objects."""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import time

import sqlalchemy as sa

from churn.v1 import auth_pb2, auth_pb2_grpc, inference_pb2, monitoring_pb2
from services.auth import metrics
from services.auth.accounts import Accounts
from services.auth.keys import KeyRing
from services.auth.passwords import PasswordHasher
from services.auth.servicer import AuthServicer
from services.auth.tokens import TokenIssuer
from services.auth.users import UserStore
from services.common.access import OPEN_INFERENCE_MODULE, service_names
from services.common.errors import NotReady
from services.common.identity import TokenVerifier
from services.common.interceptor import ServiceInterceptor
from services.common.server import ServiceHost, start_server
from services.common.settings import Settings

log = logging.getLogger("churn.auth")
JWKS_PATH = "/.well-known/jwks.json"


@dataclasses.dataclass
class AuthApp:
    settings: Settings
    store: UserStore
    keys: KeyRing
    accounts: Accounts

    def verifier(self) -> TokenVerifier:
        """The shared verifier with LOCAL parts: keys from the store, session checked against the store."""
        return TokenVerifier(self.keys, self.settings.jwt_issuer, self.settings.jwt_audience,
                             session_check=self.accounts.check_session)

    def close(self) -> None:
        self.store.close()


def _migrate_with_retry(store: UserStore, attempts: int = 10) -> int:
    """A database that is still starting (compose, k8s) is waited for briefly instead of crashing at once."""
    for attempt in range(1, attempts + 1):
        try:
            return store.migrate()
        except (sa.exc.OperationalError, NotReady) as exc:  # NotReady: refused (services/common/db.py)
            if attempt == attempts:
                raise
            log.warning("users store not reachable, retrying",
                        extra={"fields": {"attempt": attempt, "error": type(exc).__name__}})
            time.sleep(min(0.5 * attempt, 3.0))
    raise AssertionError("unreachable")


def build(settings: Settings, *, bootstrap: bool = True) -> AuthApp:
    if settings.key_propagation_seconds < settings.jwks_cache_seconds:
        log.warning("KEY_PROPAGATION_SECONDS is below JWKS_CACHE_SECONDS: a verifier may meet a new kid before "
                    "its cached JWKS holds it", extra={"fields": {"propagation": settings.key_propagation_seconds,
                                                                  "jwks_cache": settings.jwks_cache_seconds}})
    store = UserStore(settings.users_database_url)
    version = _migrate_with_retry(store)
    keys = KeyRing(store, settings.key_propagation_seconds, settings.access_token_ttl_seconds,
                   secret=settings.signing_key_secret)
    keys.ensure()
    issuer = TokenIssuer(keys, settings.jwt_issuer, settings.jwt_audience)
    hasher = PasswordHasher(settings.argon2_time_cost, settings.argon2_memory_kib)
    accounts = Accounts(store, hasher, keys, issuer, settings.access_token_ttl_seconds,
                        settings.service_token_ttl_seconds)
    app = AuthApp(settings, store, keys, accounts)
    if bootstrap:
        _bootstrap_admin(app)
    log.info("auth store ready", extra={"fields": {"schema_version": version,
                                                   "backend": store.engine.dialect.name,
                                                   "published_keys": len(keys.jwks()["keys"])}})
    return app


def _bootstrap_admin(app: AuthApp) -> None:
    """BOOTSTRAP_ADMIN_USERNAME + BOOTSTRAP_ADMIN_PASSWORD_FILE create the first admin if none exists yet."""
    username = app.settings.bootstrap_admin_username
    if not username:
        return
    path = app.settings.bootstrap_admin_password_file
    if not path or not pathlib.Path(path).is_file():
        raise SystemExit("BOOTSTRAP_ADMIN_USERNAME is set but BOOTSTRAP_ADMIN_PASSWORD_FILE does not name a file")
    password = pathlib.Path(path).read_text().strip()
    if app.accounts.bootstrap_admin(username, password):
        log.info("bootstrap admin created", extra={"fields": {"username": username}})


def start(app: AuthApp, *, port: int | None = None, http_port: int | None = None) -> ServiceHost:
    settings = app.settings
    interceptor = ServiceInterceptor.from_settings(app.verifier(), settings)
    servicer = AuthServicer(app.accounts, settings.secure_cookie)
    routes = {JWKS_PATH: lambda: ("200 OK", "application/json", app.keys.jwks_bytes())}
    host = start_server(
        settings,
        port=settings.auth_port if port is None else port,
        http_port=settings.auth_http_port if http_port is None else http_port,
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        service_names=service_names(auth_pb2),
        interceptor=interceptor,
        # The gateway's designated reflection backend: reflection paths name no service, so grpcurl through
        # :8080 reaches auth, which describes every service behind the gateway (all descriptors are importable here).
        reflect=[*service_names(inference_pb2), *service_names(monitoring_pb2),
                 *service_names(OPEN_INFERENCE_MODULE)],
        http_routes=routes,
        serving=True,  # build() has migrated the store and loaded the keys before we get here
    )
    metrics.bind_gauges(lambda: app.store.count_users(approved=True),
                        lambda: app.store.count_users(approved=False),
                        lambda: len(app.keys.jwks()["keys"]))
    return host
