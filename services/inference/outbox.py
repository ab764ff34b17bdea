"""The local prediction outbox: every prediction row is committed here before its answer goes out, and a shipper
moves the rows to monitoring later, so a prediction never waits on monitoring and no row is lost when either side
restarts.

SQLite in WAL mode with `synchronous=NORMAL`: a commit survives a process crash (the WAL is written before the
call returns) without an fsync per request. Throughput comes from group commit: concurrent callers queue their
rows and whichever finds no commit in progress becomes the leader, writes everything queued in ONE transaction and
wakes the others — under load one commit serves many requests; alone, a request commits itself with no thread
hand-off. A row holds one record: the predictions of one request (`columns`, up to RECORD_ROWS of them), or one
prediction (`record`, what outboxes written before the columnar format hold). Rows are keyed by their first
prediction id (INSERT OR IGNORE): a retried request whose rows are still waiting adds nothing. The backlog counts
predictions. One file per instance.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sqlite3
import threading
import time
from typing import Callable, Iterable, Sequence

from services.common.db import private_file
from services.common.errors import NotReady
from services.inference import metrics

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    prediction_id TEXT NOT NULL UNIQUE,
    record BLOB NOT NULL,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'record',
    predictions INTEGER NOT NULL DEFAULT 1
)"""
# Rows monitoring refused on their own (after the shipper split their batch down to one row): kept, never resent,
# so one refused row cannot hold back the rows behind it.
_SET_ASIDE_SCHEMA = """
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER PRIMARY KEY,
    prediction_id TEXT NOT NULL,
    record BLOB NOT NULL,
    reason TEXT NOT NULL,
    set_aside_at REAL NOT NULL,
    kind TEXT NOT NULL DEFAULT 'record'
)"""
# Outboxes written before the columnar format lack the last columns; their rows are PredictionRecords, one each.
_ADDED_COLUMNS = (("outbox", "kind", "TEXT NOT NULL DEFAULT 'record'"),
                  ("outbox", "predictions", "INTEGER NOT NULL DEFAULT 1"),
                  ("set_aside", "kind", "TEXT NOT NULL DEFAULT 'record'"))
RECORD, COLUMNS = "record", "columns"  # a serialized churn.v1.PredictionRecord / churn.v1.PredictionColumns


@dataclasses.dataclass(frozen=True)
class Entry:
    """One record to commit: `key` its (first) prediction id, `predictions` how many it holds."""

    key: str
    record: bytes
    kind: str = COLUMNS
    predictions: int = 1


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    seq: int
    prediction_id: str  # the first prediction id of the record
    record: bytes
    kind: str = RECORD
    predictions: int = 1


class _Ticket:
    __slots__ = ("rows", "done", "error")

    def __init__(self, rows: list[Entry]):
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
        for table, column, ddl in _ADDED_COLUMNS:
            if column not in {row[1] for row in self._writer.execute(f"PRAGMA table_info({table})")}:
                self._writer.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")
        self._reader = self._connect()  # the shipper's side: reads and deletes, under its own lock
        self._reader_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: list[_Ticket] = []
        self._writing = False
        self._closed = False
        self._rows_added = threading.Event()
        self._backlog = self._reader.execute("SELECT coalesce(sum(predictions), 0) FROM outbox").fetchone()[0]
        self._backlog_lock = threading.Lock()
        metrics.OUTBOX_BACKLOG.set(self._backlog)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    # ---- the prediction side --------------------------------------------------------------------------------
    def append(self, rows: Sequence[Entry]) -> None:
        """Commit records; returns only once they are durable. Raises NotReady when the outbox cannot be written
        (the prediction must then not be answered)."""
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
        values = [(e.key, e.record, now, e.kind, e.predictions) for ticket in batch for e in ticket.rows]
        added = 0
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            for value in values:  # one statement per record (a request's), not per prediction
                added += value[4] * self._writer.execute(
                    "INSERT OR IGNORE INTO outbox (prediction_id, record, created_at, kind, predictions) "
                    "VALUES (?, ?, ?, ?, ?)", value).rowcount
            self._writer.execute("COMMIT")
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        metrics.OUTBOX_COMMIT_ROWS.observe(sum(v[4] for v in values))
        self._adjust_backlog(added)
        self._rows_added.set()

    # ---- the shipper side -----------------------------------------------------------------------------------
    def pending(self, limit: int) -> list[OutboxRow]:
        """The oldest records not yet acknowledged, in commit order, holding `limit` predictions at most (always at
        least one record)."""
        with self._reader_lock:
            cursor = self._reader.execute(
                "SELECT seq, prediction_id, record, kind, predictions FROM outbox ORDER BY seq LIMIT ?", (limit,))
            rows, total = [], 0
            for row in cursor.fetchall():
                total += row[4]
                if rows and total > limit:
                    break
                rows.append(OutboxRow(*row))
            return rows

    def _remove(self, rows: Iterable[OutboxRow], before: Callable[[OutboxRow], None] = lambda row: None) -> int:
        """Delete records from the queue in one transaction (after `before(row)` for each); returns how many
        predictions went, and the backlog gauge follows."""
        deleted = 0
        with self._reader_lock:
            self._reader.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    before(row)
                    deleted += row.predictions * self._reader.execute("DELETE FROM outbox WHERE seq = ?",
                                                                      (row.seq,)).rowcount
                self._reader.execute("COMMIT")
            except BaseException:
                self._reader.execute("ROLLBACK")
                raise
        self._adjust_backlog(-deleted)
        return deleted

    def acknowledge(self, rows: Iterable[OutboxRow]) -> int:
        """Delete records monitoring has stored; returns how many predictions went."""
        return self._remove(list(rows))

    def set_aside(self, row: OutboxRow, reason: str) -> None:
        """Move one record monitoring refused out of the queue, with why."""
        self._remove([row], lambda r: self._reader.execute(
            "INSERT OR REPLACE INTO set_aside (seq, prediction_id, record, reason, set_aside_at, kind) "
            "VALUES (?, ?, ?, ?, ?, ?)", (r.seq, r.prediction_id, r.record, reason[:500], time.time(), r.kind)))

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
