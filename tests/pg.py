"""PostgreSQL for tests: a database of its own on the run's shared server (`own_database`), or a whole server of
the test's own (`PrivateCluster`) for tests that stop and start it — the shared server must never be restarted, other
tests use it at the same time."""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import tempfile
import uuid
from typing import Iterator

import sqlalchemy as sa

PG_BIN = pathlib.Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


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


class PrivateCluster:
    """A PostgreSQL server of one test: initdb into a fresh temporary folder, listening on 127.0.0.1:`port` with its
    socket in that folder, trust auth. PostgreSQL refuses to run as root, so under root the folder is handed to the
    `postgres` account and the tools run as it (runuser)."""

    def __init__(self, port: int):
        self.port = port
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="churn-pg-"))
        self.data = self.root / "data"
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_owner:
            shutil.chown(self.root, "postgres", "postgres")
        self._tool("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    @staticmethod
    def available() -> bool:
        return (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _tool(self, name: str, *args: str) -> None:
        done = subprocess.run([*self._as_owner, str(PG_BIN / name), *args], capture_output=True, text=True,
                              timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def start(self) -> "PrivateCluster":
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options, "-w",
                   "-t", "60", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """`fast`: open sessions are cut, then a clean shutdown (what a restart by an operator does)."""
        self._tool("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
