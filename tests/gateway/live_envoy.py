"""The rendered config run by the real Envoy (no upstream behind it), asked which route a request takes: the route
name from its JSON access log, so tests never model Envoy's route matching by hand."""
from __future__ import annotations

import http.client
import json
import pathlib
import subprocess
import time
import urllib.request

from gateway import render
from gateway.__main__ import envoy_command, is_live
from services.common.settings import Settings
from tests.harness import terminate


class LiveEnvoy:
    def __init__(self, settings: Settings, workdir: pathlib.Path):
        config = render.prepare(settings, workdir / "envoy.yaml")
        self.admin_path = workdir / "admin.address"
        self.log_path = workdir / "envoy.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(envoy_command(config, settings, admin_address_path=self.admin_path,
                                                      log_level="warning"),
                                        stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (self.admin_path.exists() and self.admin_path.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        self.admin = "http://" + self.admin_path.read_text().strip()
        self.port = 0
        while not self.port:
            try:
                listeners = json.loads(self.get_admin("/listeners?format=json"))
                self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
            except (OSError, KeyError, IndexError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        while not is_live(self.admin):
            assert time.monotonic() < deadline, f"envoy listener not accepting:\n{self.log_path.read_text()[-3000:]}"
            time.sleep(0.1)

    def get_admin(self, path: str) -> bytes:
        with urllib.request.urlopen(self.admin + path, timeout=5) as response:
            return response.read()

    def _entries(self) -> list[dict]:
        text = self.log_path.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith('{"')]

    def routes(self, requests: list[tuple[str, str, dict[str, str]]]) -> list[str]:
        """The route Envoy chose for each (method, path, headers), sent one after another ("" for none)."""
        seen = len(self._entries())
        for method, path, headers in requests:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request(method, path, body=b"" if method == "POST" else None, headers=headers)
                connection.getresponse().read()
            finally:
                connection.close()
        deadline = time.monotonic() + 10
        while len(entries := self._entries()) < seen + len(requests):  # the access log is flushed every second
            assert time.monotonic() < deadline, "Envoy did not log every request"
            time.sleep(0.2)
        return [entry["route"] or "" for entry in entries[seen:seen + len(requests)]]

    def route(self, method: str, path: str, headers: dict[str, str] | None = None) -> str:
        return self.routes([(method, path, headers or {})])[0]

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()
