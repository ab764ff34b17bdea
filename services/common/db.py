"""One way to open a store's database, so every store speaks SQLite (the embedded default) and PostgreSQL alike.

SQLite gets WAL (readers never block the writer), synchronous=NORMAL, a busy timeout (a CLI and the server may share
the file), foreign keys on, and its folder created; PostgreSQL gets a pool pre-ping so a restarted server is
survived.
"""
from __future__ import annotations

import pathlib

import sqlalchemy as sa


def make_engine(url: str) -> sa.Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        pathlib.Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine
