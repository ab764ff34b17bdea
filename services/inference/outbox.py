"""The local prediction outbox: every prediction row is committed here before its answer goes out, and a shipper
moves the rows to monitoring later, so a prediction never waits on monitoring and no row is lost when either side
restarts.

SQLite in WAL mode with `synchronous=NORMAL`: a commit survives a process crash (the WAL is written before the
call returns) without an fsync per request. Throughput comes from group commit: concurrent callers queue their
rows and whichever finds no commit in progress becomes the leader, writes everything queued in ONE transaction and
wakes the others — under load one commit serves many requests; alone, a request commits itself with no thread
hand-off. Rows are keyed by prediction id (INSERT OR IGNORE): a retried request whose rows are still waiting adds
nothing. One file per instance.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sqlite3
import threading
import time
from typing import Iterable, Sequence

from services.common.db import private_file
from services.common.errors import NotReady
from services.inference import metrics

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL UNIQUE,
    record BLOB NOT NULL,
    created_at REAL NOT NULL
)"""
# Rows monitoring refused on their own (after the shipper split their batch down to one row): kept, never resent,
# so one refused row cannot hold back the rows behind it.
_SET_ASIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    prediction_id TEXT NOT NULL,
    record BLOB NOT NULL,
    reason TEXT NOT NULL,
    set_aside_at REAL NOT NULL
)"""


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    seq: int
    prediction_id: str
    record: bytes  # a serialized churn.v1.PredictionRecord


class _Ticket:
    __slots__ = ("rows", "done", "error")

    def __init__(self, rows: list[tuple[str, bytes]]):
        self.rows = rows
        self.done = False
        self.error: BaseException | None = None


class Outbox:
    def __init__(self, path: str | pathlib.Path, busy_timeout_ms: int = 10_000):
        self.path = pathlib.Path(path)
        private_file(self.path)
        self._busy_timeout_ms = busy_timeout_ms
        self._writer = self._connect()
        self._writer.execute(_SCHEMA)
        self._writer.execute(_SET_ASIDE_SCHEMA)
        self._reader = self._connect()  # the shipper's side: reads and deletes, under its own lock
        self._reader_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: list[_Ticket] = []
        self._writing = False
        self._closed = False
        self._rows_added = threading.Event()
        self._backlog = self._reader.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self._backlog_lock = threading.Lock()
        metrics.OUTBOX_BACKLOG.set(self._backlog)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    # ---- the prediction side --------------------------------------------------------------------------------
    def append(self, rows: Sequence[tuple[str, bytes]]) -> None:
        """Commit (prediction_id, record) rows; returns only once they are durable. Raises NotReady when the
        outbox cannot be written (the prediction must then not be answered)."""
        if not rows:
            return
        ticket = _Ticket(list(rows))
        with self._cond:
            if self._closed:
                raise NotReady("prediction outbox is closed (server stopping)")
            self._queue.append(ticket)
            while not ticket.done:
                if self._writing:
                    self._cond.wait()
                    continue
                self._writing = True
                batch, self._queue = self._queue, []
                self._cond.release()
                error: BaseException | None = None
                try:
                    self._commit(batch)
                except Exception as exc:  # noqa: BLE001 - every waiter of this batch must learn it failed
                    error = exc
                finally:
                    self._cond.acquire()
                    self._writing = False
                    for waiting in batch:
                        waiting.done, waiting.error = True, error
                    self._cond.notify_all()
        if ticket.error is not None:
            raise NotReady(f"prediction outbox unavailable: {ticket.error}") from ticket.error

    def _commit(self, batch: list[_Ticket]) -> None:
        now = time.time()
        values = [(pid, record, now) for ticket in batch for pid, record in ticket.rows]
        before = self._writer.total_changes
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            self._writer.executemany(
                "INSERT OR IGNORE INTO outbox (prediction_id, record, created_at) VALUES (?, ?, ?)", values)
            self._writer.execute("COMMIT")
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        metrics.OUTBOX_COMMIT_ROWS.observe(len(values))
        self._adjust_backlog(self._writer.total_changes - before)
        self._rows_added.set()

    # ---- the shipper side -----------------------------------------------------------------------------------
    def pending(self, limit: int) -> list[OutboxRow]:
        """The oldest rows not yet acknowledged, in commit order."""
        with self._reader_lock:
            cursor = self._reader.execute("SELECT seq, prediction_id, record FROM outbox ORDER BY seq LIMIT ?",
                                          (limit,))
            return [OutboxRow(seq, pid, record) for seq, pid, record in cursor.fetchall()]

    def acknowledge(self, seqs: Iterable[int]) -> int:
        """Delete rows monitoring has stored; returns how many went."""
        seqs = [(seq,) for seq in seqs]
        with self._reader_lock:
            before = self._reader.total_changes
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                self._reader.executemany("DELETE FROM outbox WHERE seq = ?", seqs)
                self._reader.execute("COMMIT")
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise
            deleted = self._reader.total_changes - before
        self._adjust_backlog(-deleted)
        return deleted

    def set_aside(self, row: OutboxRow, reason: str) -> None:
        """Move one row monitoring refused out of the queue, with why."""
        with self._reader_lock:
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                self._reader.execute("INSERT OR REPLACE INTO set_aside VALUES (?, ?, ?, ?, ?)",
                                     (row.seq, row.prediction_id, row.record, reason[:500], time.time()))
                deleted = self._reader.execute("DELETE FROM outbox WHERE seq = ?", (row.seq,)).rowcount
                self._reader.execute("COMMIT")
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise
        self._adjust_backlog(-deleted)

    def set_aside_rows(self) -> list[tuple[str, str]]:
        """(prediction id, reason) of every row set aside."""
        with self._reader_lock:
            return self._reader.execute("SELECT prediction_id, reason FROM set_aside ORDER BY seq").fetchall()

    def wait_for_rows(self, timeout: float) -> None:
        """Block until a commit happens (or `timeout`): the shipper's idle wait."""
        self._rows_added.wait(timeout)
        self._rows_added.clear()

    def wake(self) -> None:
        """Release a waiting shipper (used when stopping)."""
        self._rows_added.set()

    def backlog(self) -> int:
        return self._backlog

    def _adjust_backlog(self, delta: int) -> None:
        with self._backlog_lock:
            self._backlog += delta
            metrics.OUTBOX_BACKLOG.set(self._backlog)

    def close(self) -> None:
        """Refuse new rows, wait for a commit in progress, close both connections."""
        with self._cond:
            self._closed = True
            while self._writing:
                self._cond.wait()
        with self._reader_lock:
            self._reader.close()
        self._writer.close()
        self._rows_added.set()
