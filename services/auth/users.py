"""The users store: users, service tokens and signing keys in one database, so auth replicas share all three.

SQLite (WAL) by default, PostgreSQL by URL, both through SQLAlchemy Core. The schema is versioned in
`auth_schema_version`; `migrate()` applies the missing steps in order (PostgreSQL: under an advisory lock, so
replicas starting together do not race). Times are epoch seconds (floats) to stay identical on both backends.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from services.common.db import make_engine
from services.common.errors import AlreadyExists, NotFound

metadata = sa.MetaData()

schema_version = sa.Table(
    "auth_schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("description", sa.String(200), nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)
users = sa.Table(
    "users", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("approved", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
)
# One row per minted service token: a service principal has no user row, so this row is what the session
# check confirms (present, not revoked). `kid` keeps the signing key published until the token expires.
service_tokens = sa.Table(
    "service_tokens", metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, index=True),
    sa.Column("kid", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double, nullable=True),
)
signing_keys = sa.Table(
    "signing_keys", metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("algorithm", sa.String(8), nullable=False),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("public_jwk", sa.Text, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("signs_from", sa.Double, nullable=False),
)


def _v1(connection: Connection) -> None:
    for table in (users, service_tokens, signing_keys):
        table.create(connection, checkfirst=True)


# (version, description, step). Append only; never edit a released step.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "users, service tokens, signing keys", _v1),
]


@dataclasses.dataclass(frozen=True)
class UserRecord:
    username: str
    password_hash: str = dataclasses.field(repr=False)
    role: str
    approved: bool
    created_at: float


@dataclasses.dataclass(frozen=True)
class ServiceTokenRecord:
    jti: str
    name: str
    kid: str
    issued_at: float
    expires_at: float
    revoked_at: float | None


@dataclasses.dataclass(frozen=True)
class KeyRecord:
    kid: str
    algorithm: str
    private_pem: str = dataclasses.field(repr=False)
    public_jwk: str
    created_at: float
    signs_from: float


class UserStore:
    def __init__(self, url: str, clock: Callable[[], float] = time.time):
        self.engine = make_engine(url)
        self._clock = clock

    def close(self) -> None:
        self.engine.dispose()

    # --- schema -------------------------------------------------------------------------------------------
    def migrate(self) -> int:
        """Apply missing migrations; returns the schema version now in place."""
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("select pg_advisory_xact_lock(727100001)"))
            schema_version.create(connection, checkfirst=True)
            current = connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
            for version, description, step in MIGRATIONS:
                if version > current:
                    step(connection)
                    connection.execute(schema_version.insert().values(
                        version=version, description=description, applied_at=self._clock()))
                    current = version
        return current

    def schema_version(self) -> int:
        with self.engine.connect() as connection:
            return connection.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0

    # --- users --------------------------------------------------------------------------------------------
    def create_user(self, username: str, password_hash: str, role: str, approved: bool) -> UserRecord:
        now = self._clock()
        try:
            with self.engine.begin() as connection:
                connection.execute(users.insert().values(
                    username=username, password_hash=password_hash, role=role, approved=approved,
                    created_at=now, updated_at=now))
        except sa.exc.IntegrityError:
            raise AlreadyExists(f"username: user {username!r} already exists") from None
        return UserRecord(username, password_hash, role, approved, now)

    def get_user(self, username: str) -> UserRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(users).where(users.c.username == username)).first()
        return _user(row) if row else None

    def list_users(self, pending_only: bool = False) -> list[UserRecord]:
        query = sa.select(users).order_by(users.c.username)
        if pending_only:
            query = query.where(users.c.approved.is_(False))
        with self.engine.connect() as connection:
            return [_user(row) for row in connection.execute(query)]

    def set_approved(self, username: str, approved: bool) -> UserRecord:
        with self.engine.begin() as connection:
            done = connection.execute(users.update().where(users.c.username == username)
                                      .values(approved=approved, updated_at=self._clock()))
            if done.rowcount == 0:
                raise NotFound(f"user {username!r} does not exist")
            row = connection.execute(sa.select(users).where(users.c.username == username)).first()
        return _user(row)

    def set_password_hash(self, username: str, password_hash: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(users.update().where(users.c.username == username)
                               .values(password_hash=password_hash, updated_at=self._clock()))

    def count_users(self, role: str | None = None, approved: bool | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(users)
        if role is not None:
            query = query.where(users.c.role == role)
        if approved is not None:
            query = query.where(users.c.approved.is_(approved))
        with self.engine.connect() as connection:
            return connection.execute(query).scalar() or 0

    # --- service tokens -----------------------------------------------------------------------------------
    def add_service_token(self, jti: str, name: str, kid: str, issued_at: float, expires_at: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(service_tokens.insert().values(
                jti=jti, name=name, kid=kid, issued_at=issued_at, expires_at=expires_at))

    def get_service_token(self, jti: str) -> ServiceTokenRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(service_tokens).where(service_tokens.c.jti == jti)).first()
        return ServiceTokenRecord(**row._mapping) if row else None

    def revoke_service_tokens(self, name: str) -> int:
        with self.engine.begin() as connection:
            done = connection.execute(service_tokens.update()
                                      .where(service_tokens.c.name == name, service_tokens.c.revoked_at.is_(None))
                                      .values(revoked_at=self._clock()))
        return done.rowcount

    def service_token_expiry_by_kid(self) -> dict[str, float]:
        """Latest expiry of a live (unrevoked) service token per signing key: keeps that key published."""
        query = (sa.select(service_tokens.c.kid, sa.func.max(service_tokens.c.expires_at))
                 .where(service_tokens.c.revoked_at.is_(None)).group_by(service_tokens.c.kid))
        with self.engine.connect() as connection:
            return {kid: float(expires) for kid, expires in connection.execute(query)}

    # --- signing keys -------------------------------------------------------------------------------------
    def add_key(self, record: KeyRecord) -> None:
        with self.engine.begin() as connection:
            connection.execute(signing_keys.insert().values(**dataclasses.asdict(record)))

    def list_keys(self) -> list[KeyRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(signing_keys).order_by(signing_keys.c.signs_from,
                                                                        signing_keys.c.created_at))
            return [KeyRecord(**row._mapping) for row in rows]

    def set_key_pem(self, kid: str, private_pem: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(signing_keys.update().where(signing_keys.c.kid == kid).values(private_pem=private_pem))

    def delete_keys(self, kids: list[str]) -> None:
        if kids:
            with self.engine.begin() as connection:
                connection.execute(signing_keys.delete().where(signing_keys.c.kid.in_(kids)))


def _user(row) -> UserRecord:
    return UserRecord(username=row.username, password_hash=row.password_hash, role=row.role,
                      approved=bool(row.approved), created_at=float(row.created_at))
