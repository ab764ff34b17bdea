"""One way to open a store's database, so every store speaks SQLite (the embedded default) and PostgreSQL alike.

SQLite gets WAL (readers never block the writer), synchronous=NORMAL, a busy timeout (a CLI and the server may share
the file), foreign keys on, and its folder created; PostgreSQL gets a pool pre-ping so a restarted server is
survived. A database that cannot be reached (refused connection, a connection cut mid-call by a restart) raises
NotReady — UNAVAILABLE to the caller, who retries (the outbox shipper resends its batch) — never INTERNAL.
Store files are private: 0600 (SQLite gives its -wal/-shm files the database file's mode) in folders created 0700,
and the data folder itself is kept 0700 (`private_folder`).
"""
from __future__ import annotations

import datetime as dt
import os
import pathlib

import sqlalchemy as sa

from services.common.errors import NotReady


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time the stores keep is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def private_folder(path: pathlib.Path) -> pathlib.Path:
    """Create `path` if needed and make it 0700 (only for folders this suite owns, e.g. DATA_DIR)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def private_file(path: pathlib.Path) -> pathlib.Path:
    """Create a store file 0600 before any library opens it (a new folder 0700); tighten an existing one."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        if (path.parent / name).exists():
            (path.parent / name).chmod(0o600)
    return path


def _unavailable_when_unreachable(engine: sa.Engine) -> sa.Engine:
    @sa.event.listens_for(engine, "handle_error")
    def _unreachable(context: sa.engine.ExceptionContext) -> None:
        # no connection yet = connecting failed; is_disconnect = the dialect recognised a lost connection
        if context.connection is None or context.is_disconnect:
            raise NotReady(f"the {engine.dialect.name} store is unavailable; retry later") from \
                context.original_exception

    return engine


def make_engine(url: str) -> sa.Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return _unavailable_when_unreachable(sa.create_engine(url, pool_pre_ping=True))
    if parsed.database and parsed.database != ":memory:":
        private_file(pathlib.Path(parsed.database))
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return _unavailable_when_unreachable(engine)
