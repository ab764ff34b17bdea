"""A named daemon thread that runs a job every `interval` seconds (metrics refresh, canary reconcile).

A failing run is logged and the next one still happens; `stop()` wakes the thread at once so shutdown is quick.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("churn.monitoring.scheduler")


class Periodic:
    def __init__(self, name: str, interval: float, job: Callable[[], object], first_delay: float | None = None):
        self.name = name
        self._interval = max(0.05, float(interval))
        self._first_delay = self._interval if first_delay is None else first_delay
        self._job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> "Periodic":
        self._thread.start()
        return self

    def _loop(self) -> None:
        delay = self._first_delay
        while not self._stop.wait(delay):
            try:
                self._job()
            except Exception:  # noqa: BLE001 - a scheduled job must not die on one bad run
                log.exception("scheduled job %s failed", self.name)
            delay = self._interval

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
