"""The real Envoy as a test process: config rendered from Settings, port-0 listener (real port read from the admin's
/listeners), `--admin-address-path`, `--disable-hot-restart`, ready when /clusters shows every upstream healthy."""
from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import time
import urllib.request

from gateway import render
from gateway.__main__ import envoy_command, is_live
from services.common.settings import Settings
from tests.harness import terminate


def free_port(host: str = "127.0.0.1") -> int:
    """For the one port others must know before Envoy starts (its admin: monitoring writes the canary weight)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 3) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class EnvoyProcess:
    def __init__(self, name: str, settings: Settings, workdir: pathlib.Path):
        self.name = name
        self.settings = settings
        self.config_path = render.prepare(settings, workdir / f"{name}.yaml")
        self.admin_path = workdir / f"{name}.admin"
        self.admin_path.unlink(missing_ok=True)
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(envoy_command(self.config_path, settings, admin_address_path=self.admin_path,
                                                      log_level="info"),
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.admin = ""
        self.port = 0

    def wait_ready(self, timeout: float = 60) -> "EnvoyProcess":
        deadline = time.monotonic() + timeout
        while not (self.admin_path.exists() and self.admin_path.read_text().strip()):
            self._check(deadline)
            time.sleep(0.05)
        self.admin = "http://" + self.admin_path.read_text().strip()
        while True:
            self._check(deadline)
            try:
                listeners = json.loads(http_get(f"{self.admin}/listeners?format=json"))
                self.port = listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"]
                if self.port and not self.unhealthy_clusters() and is_live(self.admin):
                    return self
            except (OSError, KeyError, IndexError, ValueError):
                pass
            time.sleep(0.1)

    def _check(self, deadline: float) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"envoy {self.name} exited {self.process.returncode}:\n{self.logs()[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"envoy {self.name} not ready; unhealthy: {self.unhealthy_clusters()}\n"
                               f"{self.logs()[-3000:]}")

    def clusters(self) -> dict[str, list[dict]]:
        data = json.loads(http_get(f"{self.admin}/clusters?format=json"))
        return {c["name"]: c.get("host_statuses", []) for c in data.get("cluster_statuses", [])}

    def unhealthy_clusters(self) -> list[str]:
        bad = []
        for name, hosts in self.clusters().items():
            for host in hosts:
                status = host.get("health_status", {})
                if status.get("eds_health_status", "HEALTHY") != "HEALTHY" or any(
                        v is True for k, v in status.items() if k.startswith("failed")):
                    bad.append(name)
        return bad

    def wait_healthy(self, clusters: list[str], healthy: bool = True, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bad = set(self.unhealthy_clusters())
            if all((name not in bad) == healthy for name in clusters):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{clusters} not {'healthy' if healthy else 'unhealthy'} in {self.name}")

    def runtime(self) -> dict[str, str]:
        data = json.loads(http_get(f"{self.admin}/runtime"))
        return {key: value.get("final_value") for key, value in data["entries"].items()}

    def stat(self, name: str) -> int:
        for line in http_get(f"{self.admin}/stats?filter=^{name}$").decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        terminate(self.process)
        self._log.close()
