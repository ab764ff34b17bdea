"""A database of its own on the run's PostgreSQL server: created, handed over, dropped (forced) afterwards."""
from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import sqlalchemy as sa


@contextlib.contextmanager
def own_database(server_url: str, prefix: str) -> Iterator[str]:
    """The URL of a new database `<prefix>_<random>` on the server `server_url` names; dropped on exit."""
    url = sa.engine.make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'create database "{name}"'))
        yield url.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(sa.text(f'drop database if exists "{name}" with (force)'))
    finally:
        admin.dispose()
