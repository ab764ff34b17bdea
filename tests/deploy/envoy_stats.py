"""A real Envoy on the rendered config with the stats listener on an ephemeral port (no upstreams needed)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import time
import urllib.request

from gateway import render
from gateway.__main__ import envoy_command, is_live
from services.common.settings import Settings
from tests.e2e.envoy_process import free_port


def gateway_env(tmp_path: pathlib.Path) -> dict[str, str]:
    return {"DATA_DIR": str(tmp_path / "var"), "SECRETS_DIR": str(tmp_path / "secrets"), "API_KEY": "client-key-1",
            "OPS_API_KEY": "ops-key-1", "GATEWAY_PORT": "0", "ENVOY_ADMIN_PORT": str(free_port()),
            "ENVOY_STATS_PORT": "0"}


class StatsEnvoy:
    def __init__(self, env: dict[str, str], workdir: pathlib.Path):
        self.settings = Settings.from_env(env)
        config = render.prepare(self.settings, workdir / "envoy.yaml")
        self.admin_path = workdir / "envoy.admin"
        self.log = open(workdir / "envoy.log", "ab")
        self.process = subprocess.Popen(envoy_command(config, self.settings, admin_address_path=self.admin_path),
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.admin = f"http://127.0.0.1:{self.settings.envoy_admin_port}"
        self.ports = self._listener_ports()

    def _listener_ports(self, timeout: float = 30) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.admin}/listeners?format=json", timeout=2) as answer:
                    listeners = json.loads(answer.read())["listener_statuses"]
                ports = {item["name"]: item["local_address"]["socket_address"]["port_value"] for item in listeners}
                if all(ports.values()) and is_live(self.admin):
                    return ports
            except (OSError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError("envoy listeners not bound")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)
        self.log.close()
