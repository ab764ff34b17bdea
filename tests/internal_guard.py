"""INTERNAL answers counted per service, wherever a test's servers run, so the autouse guard in tests/conftest.py
fails the one test that caused one (an INTERNAL is always our bug, never a caller's mistake).

In-process servers share services/common/metrics.py's counter; process-level servers (tests/harness.py
ServiceProcess) are scraped on their /metrics side port while they live, and once more just before they stop, so a
process a test starts and stops is still counted."""
from __future__ import annotations

import collections
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import GRPC_REQUESTS

SAMPLE = "churn_grpc_requests_total"


def _internal(samples) -> dict[str, float]:
    found: dict[str, float] = collections.defaultdict(float)
    for sample in samples:
        if sample.name == SAMPLE and sample.labels.get("code") == "INTERNAL":
            found[sample.labels["service"]] += sample.value
    return found


def in_process() -> dict[str, float]:
    return _internal(sample for metric in GRPC_REQUESTS.collect() for sample in metric.samples)


def scrape(http_port: int) -> dict[str, float]:
    """INTERNAL answers by service from a process's /metrics (raises when the process does not answer). Only the
    lines of the one counter are parsed: this runs twice per test for every live process."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=3) as response:
        lines = [line for line in response.read().decode().splitlines()
                 if line.startswith(SAMPLE + "{") and 'code="INTERNAL"' in line]
    return _internal(sample for family in text_string_to_metric_families("\n".join(lines) + "\n")
                     for sample in family.samples)


class Ledger:
    """Live processes (scraped on demand) plus the final counts of the ones already stopped."""

    def __init__(self):
        self.live: dict[int, object] = {}  # id(process) -> ServiceProcess
        self.finished: dict[str, float] = collections.defaultdict(float)

    def watch(self, process) -> None:
        self.live[id(process)] = process

    def retire(self, process) -> None:
        if self.live.pop(id(process), None) is not None:
            for key, value in self._read(process).items():
                self.finished[key] += value

    @staticmethod
    def _read(process) -> dict[str, float]:
        try:
            process.internal_seen = scrape(process.http_port)
        except OSError:
            pass  # died on its own or killed: its last scrape stands
        return {f"{process.name} {service}": value for service, value in process.internal_seen.items()}

    def totals(self) -> dict[str, float]:
        totals = collections.defaultdict(float, self.finished)
        for service, value in in_process().items():
            totals[f"in-process {service}"] += value
        for process in list(self.live.values()):
            for key, value in self._read(process).items():
                totals[key] += value
        return dict(totals)


LEDGER = Ledger()


def grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value > before.get(key, 0.0)}
