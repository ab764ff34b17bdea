"""Load from an external generator for the chaos tests: h2load (bench/load.py's command and pre-encoded gRPC frame)
posting Predict through a gateway (the test suite's Envoy, or `make run`'s) at a steady rate while a test breaks
something.

h2load reads no grpc-status, so every call is counted from Envoy's access log, which names each call's request id
(the prediction id is `<request id>-0`), gRPC status, upstream host and attempts: the ids a test then looks for in
monitoring's store. h2load's own HTTP counts are kept beside them, read from its per-call log (a line per finished
call, written as it finishes): a load the test ends itself (`stop`) gets no summary from h2load."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pathlib
import signal
import subprocess
import time
from typing import Callable

import sqlalchemy as sa
from churn.v1 import inference_pb2

from bench.load import H2loadSummary, grpc_frame, h2load_command

PREDICT_PATH = "/churn.v1.InferenceService/Predict"


@dataclasses.dataclass(frozen=True)
class Call:
    """One Predict call as Envoy logged it."""
    request_id: str
    grpc_status: str
    upstream_host: str
    attempts: int
    started: str
    flags: str  # Envoy's response flags ("-" = none; "DC" = the caller hung up)
    why: str  # Envoy's code details and duration, for a failing assertion's message

    @property
    def ok(self) -> bool:
        return self.grpc_status in ("OK", "0")

    @property
    def abandoned(self) -> bool:
        """The generator hung up before the answer: h2load does when it ends (its deadline, or `stop`), with the
        calls still in flight."""
        return not self.ok and "DC" in self.flags.split(",")

    @property
    def prediction_id(self) -> str:
        return f"{self.request_id}-0"


@dataclasses.dataclass
class LoadResult:
    generator: H2loadSummary
    calls: list[Call]
    concurrency: int

    @property
    def ok_ids(self) -> list[str]:
        return [call.prediction_id for call in self.calls if call.ok]

    @property
    def failed(self) -> list[Call]:
        return [call for call in self.calls if not call.ok and not call.abandoned]

    @property
    def complete(self) -> bool:
        """Envoy logged every call h2load counted, plus at most the calls h2load left in flight when it ended
        (counted by Envoy, not by h2load; each answered or abandoned), and h2load abandoned no more than that."""
        extra = len(self.calls) - self.generator.total
        return 0 <= extra <= self.concurrency and sum(c.abandoned for c in self.calls) <= self.concurrency

    def line(self) -> str:
        return (f"h2load: {self.generator.total} sent, {self.generator.succeeded} HTTP-succeeded, "
                f"{self.generator.failed} failed, {self.generator.errored} errored in {self.generator.seconds:.1f} s; "
                f"Envoy: {len(self.calls)} Predict calls logged, {len(self.ok_ids)} OK, {len(self.failed)} failed, "
                f"{sum(c.abandoned for c in self.calls)} left in flight by h2load when it ended")


class GatewayLoad:
    """`with GatewayLoad(...) as load:` starts h2load at once; `load.result()` waits until its `seconds` are over,
    `load.stop()` ends it at once (a test that keeps the load on until what it broke is back, and a little longer);
    both return the counts. `concurrency` connections, `rps` calls per second each. `access_log()` gives the
    gateway's log lines written since the load started (`GatewayLoad.through(suite, …)` reads the suite's Envoy log
    file)."""

    def __init__(self, url: str, headers: dict[str, str], customer, workdir: pathlib.Path,
                 access_log: Callable[[], list[str]], *, seconds: float, concurrency: int = 4, rps: int = 25,
                 name: str = "chaos-load"):
        self.seconds, self.access_log, self.concurrency = seconds, access_log, concurrency
        frame = workdir / f"{name}.grpc"
        frame.write_bytes(grpc_frame(inference_pb2.PredictRequest(customer=customer)))
        self.log_file = workdir / f"{name}.h2load.log"
        self.command = h2load_command(f"{url}{PREDICT_PATH}", frame, headers, concurrency, seconds, self.log_file,
                                      rps=rps)
        self.process: subprocess.Popen | None = None
        self.started_at = 0.0

    @classmethod
    def through(cls, suite, customer, **options) -> "GatewayLoad":
        log_path, offset = suite.gateway.log_path, suite.gateway.log_path.stat().st_size

        def access_log() -> list[str]:
            with open(log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace").splitlines()
        return cls(suite.gateway.url, {"authorization": f"Bearer {suite.service_token}",
                                       "x-api-key": suite.settings.api_key}, customer, suite.workdir, access_log,
                   **options)

    def __enter__(self) -> "GatewayLoad":
        self.log_file.unlink(missing_ok=True)  # h2load appends to its log
        self.started_at = time.time()
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()

    def result(self) -> LoadResult:
        return self._counted(self.seconds + 120)

    def stop(self) -> LoadResult:
        """End the load now: the calls h2load has in flight are abandoned (Envoy logs them DC), as at its deadline."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self._counted(30)

    def _counted(self, timeout: float) -> LoadResult:
        stdout, stderr = self.process.communicate(timeout=timeout)
        if self.process.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"h2load failed ({self.process.returncode}): {stderr[-2000:]}\n{stdout[-2000:]}")
        summary = self._generator_counts(time.time() - self.started_at)
        deadline = time.monotonic() + 15  # Envoy flushes its access log every second
        while len(calls := self.calls()) < summary.total - summary.errored and time.monotonic() < deadline:
            time.sleep(0.5)
        return LoadResult(summary, calls, self.concurrency)

    def _generator_counts(self, seconds: float) -> H2loadSummary:
        """h2load's counts from its per-call log (tab-separated: start, HTTP status or -1 for a call that got no
        answer, duration), as its printed summary counts them: succeeded is a 2xx or 3xx answer, failed the rest."""
        statuses = [int(line.split("\t")[1]) for line in self.log_file.read_text().splitlines()
                    if line.count("\t") >= 2] if self.log_file.exists() else []
        succeeded = sum(200 <= status < 400 for status in statuses)
        return H2loadSummary(total=len(statuses), succeeded=succeeded, failed=len(statuses) - succeeded,
                             errored=statuses.count(-1), seconds=seconds,
                             status_2xx=sum(200 <= status < 300 for status in statuses))

    def calls(self) -> list[Call]:
        found = []
        for line in self.access_log():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            # calls begun before the load are an earlier test's, their lines flushed late (Envoy: once a second)
            if entry.get("path") == PREDICT_PATH and _epoch(entry["time"]) >= self.started_at:
                attempts = str(entry.get("attempts", ""))
                found.append(Call(entry["request_id"], str(entry["grpc_status"]), str(entry["upstream_host"]),
                                  int(attempts) if attempts.isdigit() else 0, entry["time"], str(entry.get("flags")),
                                  f"{entry.get('details')} {entry.get('duration_ms')} ms"))
        return found


def _epoch(start_time: str) -> float:
    """Envoy's %START_TIME% (`2026-11-30T16:43:52.590Z`) as seconds since the epoch."""
    return dt.datetime.fromisoformat(start_time.replace("Z", "+00:00")).timestamp()


def logged(database_url: str, ids: list[str]) -> list[str]:
    """Which of `ids` monitoring's store holds (read straight from its database)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            found = []
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                found += connection.execute(sa.text("select prediction_id from predictions where prediction_id in "
                                                    f"({','.join(':p%d' % i for i in range(len(chunk)))})"),
                                            {f"p{i}": v for i, v in enumerate(chunk)}).scalars().all()
        return found
    finally:
        engine.dispose()


def wait_logged(database_url: str, ids: list[str], timeout: float) -> tuple[list[str], float]:
    """Poll the store until every id is there or `timeout` passes: (the ids found, seconds it took)."""
    began = time.monotonic()
    while len(found := logged(database_url, ids)) < len(set(ids)) and time.monotonic() - began < timeout:
        time.sleep(0.5)
    return found, time.monotonic() - began
