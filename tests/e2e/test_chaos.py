"""Chaos on the running suite under load from an external generator (issue 13): h2load posts Predict through Envoy
(tests/e2e/gateway_load.py) while a test breaks one part, and every call is counted from Envoy's access log by its
request id, the prediction id monitoring must end up holding (read from its store, once each).

- monitoring down (`CHAOS_OUTAGE_SECONDS`, 10 here; `make chaos` runs 60): no prediction fails, every row arrives;
- the PostgreSQL store of monitoring restarted (a private server: the machine's shared one is never touched);
- SIGTERM of the canary at weight 50: the calls it had accepted finish OK, its share goes to production;
- kill -9 of production while its outbox holds every prediction made with monitoring down."""
from __future__ import annotations

import os
import threading
import time

import grpc
import pytest
from churn.v1 import inference_pb2

from services.inference.app import outbox_path
from services.inference.outbox import Outbox
from tests.e2e.gateway_load import GatewayLoad, wait_logged
from tests.harness import ServiceProcess
from tests.internal_guard import LEDGER
from tools.run_suite import stop_wait_seconds

pytestmark = pytest.mark.integration
OUTAGE_SECONDS = float(os.environ.get("CHAOS_OUTAGE_SECONDS", "10"))
STORE_DOWN_SECONDS = float(os.environ.get("CHAOS_STORE_DOWN_SECONDS", "5"))
DELIVERY_TIMEOUT = 120  # the shipper's backoff is capped at 30 s: everything is in well before this
DRAIN_ROWS = 5000  # each slow call pinned to the canary: an Explain of this many rows (2-3 s alone), the most allowed


def start_again(suite, key: str, name: str, module: str, env: dict[str, str]) -> None:
    env = dict(env)
    env.pop("PORT_FILE", None)
    suite.services[key] = ServiceProcess(name, module, env, suite.workdir).wait_ready(120)


def same_ports(process: ServiceProcess, prefix: str) -> dict[str, str]:
    return {f"{prefix}_PORT": str(process.port), f"{prefix}_HTTP_PORT": str(process.http_port)}


def monitoring_url(suite) -> str:
    return suite.services["monitoring"].env.get("MONITORING_DATABASE_URL") or suite.settings.monitoring_database_url


def test_monitoring_down_under_load_loses_no_row(suite, customers):
    """Predictions never wait on monitoring (the outbox holds them); after it is back every row arrives once."""
    monitoring = suite.services["monitoring"]
    env = dict(monitoring.env, **same_ports(monitoring, "MONITORING"))
    with GatewayLoad.through(suite, customers[1], seconds=OUTAGE_SECONDS + 12, name="monitoring-down") as load:
        time.sleep(3)
        monitoring.kill()
        down_at = time.monotonic()
        try:
            time.sleep(OUTAGE_SECONDS)
        finally:
            start_again(suite, "monitoring", "monitoring", "services.monitoring", env)
        back_at = time.monotonic()
        result = load.result()
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids, DELIVERY_TIMEOUT)
    print(f"\nmonitoring down {back_at - down_at:.1f} s under load: {result.line()}; {len(set(found))} of "
          f"{len(result.ok_ids)} rows in monitoring {time.monotonic() - back_at:.1f} s after it served again")
    assert not result.failed, result.failed[:5]
    assert result.generator.total > 10 * OUTAGE_SECONDS and result.complete, result.line()
    assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"


def test_postgres_store_restarted_under_load_loses_no_row(suite, customers, private_postgres):
    """Monitoring on a PostgreSQL server of this test's own; the server stopped (fast) under load and started again:
    the shipper's batches fail meanwhile (UNAVAILABLE, never INTERNAL) and are sent again; every row arrives once."""
    original = suite.services["monitoring"]
    env = dict(original.env, **same_ports(original, "MONITORING"))
    original.stop()
    try:
        start_again(suite, "monitoring", "monitoring", "services.monitoring",
                    dict(env, MONITORING_DATABASE_URL=private_postgres.url))
        suite.gateway.wait_healthy(["monitoring"], timeout=60)
        with GatewayLoad.through(suite, customers[2], seconds=STORE_DOWN_SECONDS + 15, name="store-restart") as load:
            time.sleep(4)
            private_postgres.stop("fast")
            stopped_at = time.monotonic()
            time.sleep(STORE_DOWN_SECONDS)
            private_postgres.start()
            back_at = time.monotonic()
            result = load.result()
        found, _ = wait_logged(private_postgres.url, result.ok_ids, DELIVERY_TIMEOUT)
        print(f"\nPostgreSQL store down {back_at - stopped_at:.1f} s under load: {result.line()}; "
              f"{len(set(found))} of {len(result.ok_ids)} rows in the store {time.monotonic() - back_at:.1f} s "
              "after it started again")
        assert not result.failed and result.complete, (result.line(), result.failed[:5])
        assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"
    finally:
        suite.services["monitoring"].stop()
        start_again(suite, "monitoring", "monitoring", "services.monitoring", env)
        suite.gateway.wait_healthy(["monitoring"], timeout=60)


def test_sigterm_drains_in_flight_calls_under_load(suite, customers, canary_restored):
    """At weight 50 under load, slow Explain calls pinned to the canary are in flight when it gets SIGTERM: each
    finishes OK; the weighted calls that reach it meanwhile go to production (Envoy's retry); it exits 0 within its
    grace; every prediction it answered reaches monitoring after its restart."""
    suite.gateway.wait_healthy(["inference_production", "inference_staging_hosts"], timeout=30)
    suite.set_canary(50)
    staging = suite.services["staging"]
    _, inference, _ = suite.stubs()
    pinned = suite.md(suite.admin_token(), key="ops", x_churn_alias="staging")
    request = inference_pb2.ExplainRequest(customers=[customers[i % len(customers)] for i in range(DRAIN_ROWS)])
    outcomes: list[tuple[str, float]] = []

    def slow_call() -> None:
        try:
            inference.Explain(request, metadata=pinned, timeout=60)
            outcomes.append(("OK", time.monotonic()))
        except grpc.RpcError as error:
            outcomes.append((f"{error.code().name}: {error.details()}", time.monotonic()))

    try:
        with GatewayLoad.through(suite, customers[3], seconds=16, name="sigterm-drain") as load:
            time.sleep(4)
            callers = [threading.Thread(target=slow_call) for _ in range(2)]
            for caller in callers:
                caller.start()
            time.sleep(0.5)  # both reached the canary (they run for seconds)
            LEDGER.retire(staging)  # its INTERNAL count so far: it cannot be scraped once it has exited
            staging.process.terminate()
            signalled_at = time.monotonic()
            code = staging.process.wait(timeout=60)
            exited_after = time.monotonic() - signalled_at
            for caller in callers:
                caller.join(60)
            result = load.result()
    finally:
        staging.stop()
        start_again(suite, "staging", "inference_staging", "services.inference",
                    dict(staging.env, INFERENCE_STAGING_PORT=str(staging.port)))
        suite.gateway.wait_healthy(["inference_staging_hosts"], timeout=30)
    staging_host = f"127.0.0.1:{staging.port}"
    served = [c for c in result.calls if c.upstream_host == staging_host]
    retried = [c for c in result.calls if c.attempts > 1]
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids, DELIVERY_TIMEOUT)
    print(f"\nSIGTERM of the canary at weight 50 under load: {result.line()}; {len(served)} served by the canary, "
          f"{len(retried)} retried; slow calls in flight: {[o for o, _ in outcomes]} (ended "
          f"{[round(t - signalled_at, 1) for _, t in outcomes]} s after SIGTERM); exited {code} after "
          f"{exited_after:.1f} s; {len(set(found))} of {len(result.ok_ids)} rows in monitoring")
    assert [o for o, _ in outcomes] == ["OK", "OK"], outcomes
    assert all(t > signalled_at for _, t in outcomes), "a slow call ended before SIGTERM: nothing was drained"
    assert code == 0 and exited_after < stop_wait_seconds(suite.settings), "killed, or past the runner's wait"
    assert not result.failed and result.complete, (result.line(), result.failed[:5])
    assert served, "the canary served none of the load"
    assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"


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
        start_again(suite, "production", "inference_production", "services.inference",
                    dict(production.env, INFERENCE_PRODUCTION_PORT=str(production.port)))
        start_again(suite, "monitoring", "monitoring", "services.monitoring", monitoring_env)
        suite.gateway.wait_healthy(["inference_production", "monitoring"], timeout=60)
    found, _ = wait_logged(monitoring_url(suite), result.ok_ids, DELIVERY_TIMEOUT)
    print(f"\nkill -9 of production with a full outbox: {result.line()}; {len(set(found))} of "
          f"{len(result.ok_ids)} rows reached monitoring after the restart")
    assert len(found) == len(set(found)) == len(result.ok_ids), "rows lost or stored twice"
