"""The outbox shipper: a background thread that moves committed prediction rows to monitoring's
`RecordPredictions`, in batches, with a service token.

A row leaves the outbox only after monitoring acknowledged its batch (monitoring stores idempotently by prediction
id, so a batch resent after a lost acknowledgement is harmless). Monitoring down → the attempt fails, the thread
backs off exponentially (with jitter, at most RETRY_CAP_SECONDS) and tries again; predictions are never affected.
A batch that is not full waits `linger` seconds for more rows before it goes (Kafka's linger.ms): at one request at
a time each prediction would otherwise be an RPC of its own, and monitoring's cost per call dwarfs its cost per row.
The token is the setting `SERVICE_TOKEN` or the file `<SECRETS_DIR>/service_token` (written by `python -m
services.auth create-service-token`), re-read whenever the file changes, so a re-minted token is picked up without
a restart.
"""
from __future__ import annotations

import logging
import random
import threading
from typing import Protocol, Sequence

import grpc
from churn.v1 import monitoring_pb2, monitoring_pb2_grpc

from services.common.errors import NotReady
from services.common.logs import fields
from services.common.settings import Settings
from services.common.token_file import TokenFile
from services.inference import metrics
from services.inference.outbox import COLUMNS, Outbox, OutboxRow

log = logging.getLogger("churn.inference.shipper")
# The longest wait between tries while monitoring is away, for the shipper and its channel's reconnects alike: rows
# flow again within seconds of its return (with 30 s they waited up to as long again as it had been away), and a try
# every 1-2 s costs a down monitoring nothing.
RETRY_CAP_SECONDS = 2.0
# Codes that refuse the batch itself (its content or size): resending it unchanged can never succeed.
REFUSED = frozenset({"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE"})


class ShipError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Sink(Protocol):
    def send(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver outbox records; return only when the receiver stored them, else raise ShipError."""


class ServiceToken(TokenFile):
    """The outbox's token: `SERVICE_TOKEN`, else the file `<SECRETS_DIR>/service_token`; missing → ShipError."""

    def get(self) -> str:
        try:
            return super().get()
        except NotReady as exc:
            raise ShipError("NO_TOKEN", exc.message) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> "ServiceToken":
        return cls(settings.service_token, settings.secrets_dir / "service_token", "SERVICE_TOKEN")


class MonitoringSink:
    """RecordPredictions over gRPC, with the service token and the client API key."""

    def __init__(self, address: str, token: ServiceToken, api_key: str, options: list[tuple[str, int]],
                 timeout: float = 10.0):
        self._channel = grpc.insecure_channel(address, options=[
            *options, ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", int(RETRY_CAP_SECONDS * 1000))])
        self._stub = monitoring_pb2_grpc.MonitoringServiceStub(self._channel)
        self._token = token
        self._api_key = api_key
        self._timeout = timeout

    def send(self, rows: Sequence[OutboxRow]) -> None:
        request = monitoring_pb2.RecordPredictionsRequest()
        for row in rows:
            (request.batches if row.kind == COLUMNS else request.records).add().MergeFromString(row.record)
        metadata = (("authorization", f"Bearer {self._token.get()}"), ("x-api-key", self._api_key))
        try:
            reply = self._stub.RecordPredictions(request, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as error:
            raise ShipError(error.code().name, error.details() or "") from None
        sent = sum(row.predictions for row in rows)
        if reply.received != sent:
            raise ShipError("SHORT_ACK", f"monitoring acknowledged {reply.received} of {sent} rows")

    def close(self) -> None:
        self._channel.close()


class Shipper:
    """Ships outbox rows until stopped. One thread; batches of up to `batch_size` predictions, oldest first."""

    def __init__(self, outbox: Outbox, sink: Sink, batch_size: int = 500, idle_wait: float = 1.0,
                 initial_backoff: float = 0.2, max_backoff: float = RETRY_CAP_SECONDS, linger: float = 0.0):
        self._outbox = outbox
        self._sink = sink
        self._batch_size = batch_size
        self._linger = linger
        self._idle_wait = idle_wait
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-shipper", daemon=True)

    def start(self) -> "Shipper":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight (if any) and stop; unshipped rows stay in the outbox for the next start."""
        self._stop.set()
        self._outbox.wake()
        self._thread.join(timeout)

    def ship_once(self) -> int:
        """Send one batch; returns predictions acknowledged (0 when the outbox is empty). Raises ShipError."""
        rows: list[OutboxRow] = self._outbox.pending(self._batch_size)
        if not rows:
            return 0
        return self._deliver(rows)

    def _deliver(self, rows: list[OutboxRow]) -> int:
        """A batch monitoring refuses as such (not a transient failure) is split in halves until the refused record
        is alone; that record is set aside in the outbox (metric, error log) and everything else is delivered."""
        try:
            self._sink.send(rows)
        except ShipError as error:
            if error.code not in REFUSED:
                raise
            metrics.SHIP_FAILURES.labels(error.code).inc()
            if len(rows) > 1:
                middle = len(rows) // 2
                return self._deliver(rows[:middle]) + self._deliver(rows[middle:])
            self._outbox.set_aside(rows[0], str(error))
            metrics.SET_ASIDE.inc()
            log.error("monitoring refused a prediction record; set aside in the outbox",
                      extra=fields(prediction_id=rows[0].prediction_id[:128], error=str(error)[:300]))
            return 0
        acknowledged = self._outbox.acknowledge(rows)
        metrics.SHIPPED.inc(sum(row.predictions for row in rows))
        return acknowledged

    def _run(self) -> None:
        backoff, failing_since_logged = self._initial_backoff, False
        while not self._stop.is_set():
            try:
                shipped = self.ship_once()
            except ShipError as error:
                metrics.SHIP_FAILURES.labels(error.code).inc()
                if not failing_since_logged:
                    log.warning("shipping predictions to monitoring failed; rows wait in the outbox",
                                extra=fields(error=str(error), backlog=self._outbox.backlog()))
                    failing_since_logged = True
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._max_backoff)
                continue
            except Exception:  # noqa: BLE001 - the thread must survive anything (a sqlite hiccup, a bug) and retry
                log.exception("outbox shipper step failed")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            if failing_since_logged:
                log.info("shipping predictions to monitoring resumed", extra=fields(backlog=self._outbox.backlog()))
                failing_since_logged = False
            backoff = self._initial_backoff
            if shipped == 0:
                self._outbox.wait_for_rows(self._idle_wait)
            if shipped < self._batch_size and self._linger:
                self._stop.wait(self._linger)
