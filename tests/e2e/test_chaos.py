"""Chaos on the running suite under load from an external generator (issue 13): h2load posts Predict through Envoy
(tests/e2e/gateway_load.py) while a test breaks one part, and every call is counted from Envoy's access log by its
request id, the prediction id monitoring must end up holding (read from its store, once each). The load runs from
LEAD_SECONDS before the fault until the broken part is back and TAIL_SECONDS more; the rows are then polled for.

- monitoring down (`CHAOS_OUTAGE_SECONDS`, 10 here; `make chaos` runs 60): no prediction fails, every row arrives;
- the PostgreSQL store of monitoring restarted (a private server: the machine's shared one is never touched);
- SIGTERM of the canary at weight 50: streams it had accepted are still answered once it stops accepting calls,
  and end OK; its share goes to production;
- kill -9 of production while its outbox holds every prediction made with monitoring down."""
from __future__ import annotations

import os
import queue
import socket
import time

import pytest
from churn.v1 import inference_pb2

from services.inference.app import outbox_path
from services.inference.outbox import Outbox
from tests.e2e.conftest import metric_total
from tests.e2e.gateway_load import GatewayLoad, wait_logged
from tests.harness import ServiceProcess
from tests.internal_guard import LEDGER
from tools.run_suite import stop_wait_seconds

pytestmark = pytest.mark.integration
OUTAGE_SECONDS = float(os.environ.get("CHAOS_OUTAGE_SECONDS", "10"))
STORE_DOWN_SECONDS = float(os.environ.get("CHAOS_STORE_DOWN_SECONDS", "5"))
LEAD_SECONDS = 1  # load before the fault: 100 calls answered and their rows shipping
TAIL_SECONDS = 2  # load after the part is back: calls go on while it recovers
LOAD_LIMIT = 900  # h2load's own deadline for a load the test stops (reached only if a test never does)
DELIVERY_TIMEOUT = 120  # the shipper's backoff is capped at 2 s: everything is in well before this
DRAIN_STREAMS = 2  # StreamPredict calls pinned to the canary, open across its SIGTERM


def start_again(suite, *services: tuple[str, str, str, dict[str, str]]) -> None:
    """(key, process name, module, env) each started on the ports its env names: all at once, then each waited for
    (two cold starts overlap)."""
    for key, name, module, env in services:
        suite.services[key] = ServiceProcess(name, module, {k: v for k, v in env.items() if k != "PORT_FILE"},
                                             suite.workdir)
    for key, *_ in services:
        suite.services[key].wait_ready(120)


def same_ports(process: ServiceProcess, prefix: str) -> dict[str, str]:
    return {f"{prefix}_PORT": str(process.port), f"{prefix}_HTTP_PORT": str(process.http_port)}


def monitoring_url(suite) -> str:
    return suite.services["monitoring"].env.get("MONITORING_DATABASE_URL") or suite.settings.monitoring_database_url


def ship_failures(process: ServiceProcess) -> float:
    return metric_total(process.http_port, "churn_inference_ship_failures_total", code="UNAVAILABLE")


def test_monitoring_down_under_load_loses_no_row(suite, customers):
    """Predictions never wait on monitoring (the outbox holds them); after it is back every row arrives once."""
    monitoring, production = suite.services["monitoring"], suite.services["production"]
    env = dict(monitoring.env, **same_ports(monitoring, "MONITORING"))
    failures_before = ship_failures(production)
    with GatewayLoad.through(suite, customers[1], seconds=LOAD_LIMIT, name="monitoring-down") as load:
        time.sleep(LEAD_SECONDS)
        monitoring.kill()
        down_at = time.monotonic()
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            start_again(suite, ("monitoring", "monitoring", "services.monitoring", env))
        back_at = time.monotonic()
        time.sleep(TAIL_SECONDS)
        result = load.stop()
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids, DELIVERY_TIMEOUT)
    print(f"\nmonitoring down {back_at - down_at:.1f} s under load: {result.line()}; {len(set(found))} of "
          f"{len(result.ok_ids)} rows in monitoring {time.monotonic() - back_at:.1f} s after it served again")
    assert not result.failed, result.failed[:5]
    assert result.generator.total > 10 * OUTAGE_SECONDS and result.complete, result.line()
    assert ship_failures(production) > failures_before, "the shipper never met the outage"
    assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"


def test_postgres_store_restarted_under_load_loses_no_row(suite, customers, private_postgres):
    """Monitoring on a PostgreSQL server of this test's own; the server stopped (fast) under load and started again:
    the shipper's batches fail meanwhile (UNAVAILABLE, never INTERNAL) and are sent again; every row arrives once.
    Monitoring is moved to that server and back with kill -9 (no load then, nothing in flight to drain)."""
    original, production = suite.services["monitoring"], suite.services["production"]
    env = dict(original.env, **same_ports(original, "MONITORING"))
    original.kill()
    try:
        start_again(suite, ("monitoring", "monitoring", "services.monitoring",
                            dict(env, MONITORING_DATABASE_URL=private_postgres.url)))
        failures_before = ship_failures(production)
        with GatewayLoad.through(suite, customers[2], seconds=LOAD_LIMIT, name="store-restart") as load:
            time.sleep(LEAD_SECONDS)
            private_postgres.stop("fast")
            stopped_at = time.monotonic()
            time.sleep(STORE_DOWN_SECONDS)
            private_postgres.start()
            back_at = time.monotonic()
            time.sleep(TAIL_SECONDS)
            result = load.stop()
        found, _ = wait_logged(private_postgres.url, result.ok_ids, DELIVERY_TIMEOUT)
        print(f"\nPostgreSQL store down {back_at - stopped_at:.1f} s under load: {result.line()}; "
              f"{len(set(found))} of {len(result.ok_ids)} rows in the store {time.monotonic() - back_at:.1f} s "
              "after it started again")
        assert not result.failed and result.complete, (result.line(), result.failed[:5])
        assert ship_failures(production) > failures_before, "the shipper never met the outage"
        assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"
    finally:
        suite.services["monitoring"].kill()
        start_again(suite, ("monitoring", "monitoring", "services.monitoring", env))
        suite.gateway.wait_healthy(["monitoring"], timeout=60)


class HeldStream:
    """A StreamPredict the caller keeps open between its messages: a call in flight for as long as the test likes,
    at no cost to the server while it waits."""

    def __init__(self, inference, metadata, customer):
        self._requests: queue.Queue = queue.Queue()
        self._replies = inference.StreamPredict(iter(self._requests.get, None), metadata=metadata, timeout=60)
        self._customer, self._sent = customer, 0

    def ask(self) -> inference_pb2.Prediction:
        self._sent += 1
        self._requests.put(inference_pb2.StreamPredictRequest(message_id=str(self._sent), customer=self._customer))
        reply = next(self._replies)
        assert reply.message_id == str(self._sent) and reply.HasField("prediction"), reply
        return reply.prediction

    def close(self) -> list:
        """End the stream; the server's further replies (none expected) — raises if the call did not end OK."""
        self._requests.put(None)
        return list(self._replies)


def refuses_connections(port: int) -> bool:
    """True once nothing listens on `port`: a gRPC server closes its listener as its stop() begins, while the calls
    already in flight carry on (for its grace)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_in_flight_calls_under_load(suite, customers, canary_restored):
    """At weight 50 under load, streams pinned to the canary are open when it gets SIGTERM; once it stops accepting
    calls (its port refuses connections) each stream is asked again, answered by the canary, and ends OK; the
    weighted calls that reach it meanwhile go to production (Envoy's retry); it exits 0 within the runner's wait;
    every prediction it answered reaches monitoring after its restart."""
    suite.gateway.wait_healthy(["inference_production", "inference_staging_hosts"], timeout=30)
    suite.set_canary(50)
    staging = suite.services["staging"]
    _, inference, _ = suite.stubs()
    pinned = suite.md(suite.admin_token(), key="ops", x_churn_alias="staging")
    wait = stop_wait_seconds(suite.settings)
    try:
        with GatewayLoad.through(suite, customers[3], seconds=LOAD_LIMIT, name="sigterm-drain") as load:
            streams = [HeldStream(inference, pinned, customers[10 + i]) for i in range(DRAIN_STREAMS)]
            before = [stream.ask() for stream in streams]
            time.sleep(LEAD_SECONDS)
            LEDGER.retire(staging)  # its INTERNAL count so far: it cannot be scraped once it has exited
            staging.process.terminate()
            signalled_at = time.monotonic()
            while not (refused := refuses_connections(staging.port)) and time.monotonic() - signalled_at < wait:
                time.sleep(0.05)
            refused_after = time.monotonic() - signalled_at
            after = [stream.ask() for stream in streams]
            leftovers = [stream.close() for stream in streams]
            code = staging.process.wait(timeout=wait)
            exited_after = time.monotonic() - signalled_at
            time.sleep(TAIL_SECONDS)
            result = load.stop()
    finally:
        staging.stop()
        start_again(suite, ("staging", "inference_staging", "services.inference",
                            dict(staging.env, INFERENCE_STAGING_PORT=str(staging.port))))
        suite.gateway.wait_healthy(["inference_staging_hosts"], timeout=30)
    staging_host = f"127.0.0.1:{staging.port}"
    served = [c for c in result.calls if c.upstream_host == staging_host]
    retried = [c for c in result.calls if c.attempts > 1]
    streamed = [p.prediction_id for p in before + after]
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids + streamed, DELIVERY_TIMEOUT)
    print(f"\nSIGTERM of the canary at weight 50 under load: {result.line()}; {len(served)} served by the canary, "
          f"{len(retried)} retried; it refused connections {refused_after:.1f} s after SIGTERM, then its "
          f"{DRAIN_STREAMS} open streams were answered by {sorted({p.model.alias for p in after})}; exited {code} "
          f"after {exited_after:.1f} s; {len(set(found))} of {len(result.ok_ids) + len(streamed)} rows in monitoring")
    assert refused, "it never stopped accepting calls"
    assert {p.model.alias for p in before + after} == {"staging"}, [p.model for p in before + after]
    assert leftovers == [[]] * DRAIN_STREAMS, leftovers
    assert code == 0 and exited_after < wait, "killed, or past the runner's wait"
    assert not result.failed and result.complete, (result.line(), result.failed[:5])
    assert served, "the canary served none of the load"
    assert len(found) == len(set(found)) == len(result.ok_ids) + len(streamed), "rows lost or stored twice"


def test_kill_9_of_production_with_a_full_outbox_loses_no_row(suite, customers):
    """Monitoring killed; h2load's predictions (all to production at weight 0) wait in the outbox; production
    killed -9 (no drain, no final ship: only committed outbox rows survive); both restarted on their ports."""
    monitoring, production = suite.services["monitoring"], suite.services["production"]
    monitoring_env = dict(monitoring.env, **same_ports(monitoring, "MONITORING"))
    monitoring.kill()
    try:
        with GatewayLoad.through(suite, customers[4], seconds=3, rps=25, name="full-outbox") as load:
            result = load.result()
        assert not result.failed and result.complete and len(result.ok_ids) > 100, result.line()
        production.kill()
        held = Outbox(outbox_path(suite.settings, "production"))
        try:
            assert set(result.ok_ids) <= {row.prediction_id for row in held.pending(100_000)}, "rows left early"
        finally:
            held.close()
    finally:
        start_again(suite, ("production", "inference_production", "services.inference",
                            dict(production.env, INFERENCE_PRODUCTION_PORT=str(production.port))),
                    ("monitoring", "monitoring", "services.monitoring", monitoring_env))
        suite.gateway.wait_healthy(["inference_production", "monitoring"], timeout=60)
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids, DELIVERY_TIMEOUT)
    print(f"\nkill -9 of production with a full outbox: {result.line()}; {len(set(found))} of "
          f"{len(result.ok_ids)} rows reached monitoring after the restart")
    assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"
