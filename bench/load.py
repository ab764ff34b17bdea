"""External load generators: h2load (Debian nghttp2-client) with a pre-encoded gRPC frame, wrk for REST/JSON.

Neither reads grpc-status, and an HTTP 200 does not prove a gRPC call succeeded: a point's successes are the OK
answers the servers themselves counted (`churn_grpc_requests_total{code="OK"}` on each instance's /metrics,
scraped before and after) for everything that has such a counter; the HTTP-only anchors count wrk's 2xx answers.
Latency percentiles come from h2load's per-request log and wrk's --latency distribution."""
from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import statistics
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


@dataclasses.dataclass
class Point:
    requests: int  # answers the load generator saw (any status)
    ok: int  # answers counted OK (server metrics, or 2xx where the target has no gRPC counter)
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int = 0  # h2load: requests that got no complete answer (errored, timed out, reset)
    status_2xx: int = 0  # h2load: answers with HTTP status 2xx (a gRPC error still has 200: see `ok`)

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def grpc_frame(message) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the protobuf bytes."""
    payload = message.SerializeToString()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def metric_sum(metric_ports: list[int], name: str, **labels: str) -> float:
    """A counter summed over instances' /metrics side ports (samples matching `labels`)."""
    total = 0.0
    for port in metric_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
    return total


def ok_count(metric_ports: list[int], method: str = "Predict") -> float:
    return metric_sum(metric_ports, "churn_grpc_requests_total", code="OK", method=method)


def tools_missing() -> list[str]:
    return [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]


def _percentiles_ms(latencies_us: list[float]) -> tuple[float, float]:
    if len(latencies_us) < 2:
        value = latencies_us[0] / 1000 if latencies_us else 0.0
        return value, value
    cuts = statistics.quantiles(latencies_us, n=100, method="inclusive")
    return cuts[49] / 1000, cuts[98] / 1000


def h2load_command(url: str, frame: pathlib.Path, headers: dict[str, str], concurrency: int, seconds: float,
                   log_file: pathlib.Path, rps: int = 0, requests: int | None = None) -> list[str]:
    """h2load posting `frame` as a gRPC call: `concurrency` connections with one stream each, for `seconds` — or,
    given `requests`, exactly that many requests (none cut off at the end, so every one is accounted for); `rps` > 0
    caps each connection's requests per second (a steady load instead of as fast as possible)."""
    extent = ["-n", str(requests)] if requests else ["-D", f"{round(seconds * 1000)}ms"]  # -D takes no fractions
    command = ["h2load", *extent, "-c", str(concurrency), "-m", "1", "-t", "1", "-d", str(frame),
               "--log-file", str(log_file), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if rps > 0:
        command += ["--rps", str(rps)]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    return command + [url]


@dataclasses.dataclass
class H2loadSummary:
    """h2load's own counts (HTTP level: it does not read grpc-status) and its measured seconds."""
    total: int
    succeeded: int
    failed: int
    errored: int
    seconds: float
    status_2xx: int  # answers with HTTP status 2xx (a gRPC error still has 200)


def h2load_summary(stdout: str) -> H2loadSummary:
    finished = re.search(r"finished in ([\d.]+(?:us|ms|s))", stdout)
    counts = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored", stdout)
    status_2xx = re.search(r"status codes: (\d+) 2xx", stdout)
    return H2loadSummary(total=int(counts.group(1)), succeeded=int(counts.group(2)), failed=int(counts.group(3)),
                         errored=int(counts.group(4)), seconds=_ms(finished.group(1)) / 1000,
                         status_2xx=int(status_2xx.group(1)) if status_2xx else 0)


def h2load(url: str, frame: pathlib.Path, headers: dict[str, str], concurrency: int, seconds: float,
           metric_ports: list[int], log_file: pathlib.Path, requests: int | None = None) -> Point:
    """One h2load run: `concurrency` connections with one stream each, for `seconds` (or exactly `requests`)."""
    log_file.unlink(missing_ok=True)  # h2load appends to its log: a warm-up's latencies must not count
    before = ok_count(metric_ports)
    done = subprocess.run(h2load_command(url, frame, headers, concurrency, seconds, log_file, requests=requests),
                          capture_output=True, text=True, timeout=seconds + 60)
    after = ok_count(metric_ports)
    if done.returncode != 0:
        raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr[-2000:]}\n{done.stdout[-2000:]}")
    summary = h2load_summary(done.stdout)
    latencies = [float(line.split("\t")[2]) for line in log_file.read_text().splitlines() if line.count("\t") >= 2]
    p50, p99 = _percentiles_ms(latencies)
    return Point(requests=summary.succeeded, ok=int(after - before), seconds=summary.seconds, p50_ms=p50, p99_ms=p99,
                 failed=summary.failed, status_2xx=summary.status_2xx)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * _UNITS[unit]


def wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: float, script: pathlib.Path,
        metric_ports: list[int] | None = None, method: str = "POST") -> Point:
    """One wrk run (1 thread, `concurrency` connections). With `metric_ports` the successes are the servers'
    OK counts; without, wrk's 2xx/3xx answers (for plain-HTTP anchors)."""
    lines = [f"wrk.method = {_lua(method)}", f"wrk.body = {_lua(body.decode())}"]
    lines += [f"wrk.headers[{_lua(name)}] = {_lua(value)}" for name, value in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    command = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--latency",
               "--timeout", "10s", "-s", str(script), url]
    before = ok_count(metric_ports) if metric_ports else 0.0
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    after = ok_count(metric_ports) if metric_ports else 0.0
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-2000:]}\n{done.stdout[-2000:]}")
    out = done.stdout
    total, elapsed = re.search(r"(\d+) requests in ([\d.]+\w+)", out).groups()
    total = int(total)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = int(bad.group(1)) if bad else 0  # timed-out requests are not in wrk's completed count at all
    p50 = _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1))
    p99 = _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1))
    ok = int(after - before) if metric_ports else total - failed
    return Point(requests=total, ok=ok, seconds=_ms(elapsed) / 1000, p50_ms=p50, p99_ms=p99)


def _lua(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
