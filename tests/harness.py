"""Start the suite's real processes on loopback for tests: each service on port 0, its bound ports read from
its PORT_FILE, readiness judged by grpc.health.v1 — the same way `make run` and Envoy see them."""
from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.internal_guard import LEDGER

ROOT = pathlib.Path(__file__).resolve().parent.parent


def base_env(workdir: pathlib.Path) -> dict[str, str]:
    """A self-contained environment: its own data and secrets folders, fresh keys, ephemeral ports."""
    inherited = ("AUTH_", "INFERENCE_", "MONITORING_", "MLFLOW_", "USERS_DATABASE", "GATEWAY_", "ENVOY_", "JWKS_",
                 "PORTS_DIR")
    env = {key: value for key, value in os.environ.items() if not key.startswith(inherited)}
    env.update({
        "DATA_DIR": str(workdir / "var"),
        "SECRETS_DIR": str(workdir / "secrets"),
        "API_KEY": "client-" + secrets.token_hex(8),
        "OPS_API_KEY": "ops-" + secrets.token_hex(8),
        "GATEWAY_SECRET": "gateway-" + secrets.token_hex(8),
        "SIGNING_KEY_SECRET": "signing-" + secrets.token_hex(8),
        "DIRECT_AUTH_RATE_PER_MINUTE": "0",  # suites log in directly many times; tests/auth/test_direct_calls.py
        "BIND_HOST": "127.0.0.1",
        "JWKS_CACHE_SECONDS": "5",
        "KEY_PROPAGATION_SECONDS": "6",
        "SESSION_CHECK_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
        # one process per inference instance in tests (two instances, several suites, 2 cores); the worker pool
        # has its own test (tests/e2e/test_inference_workers.py)
        "INFERENCE_WORKERS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
    })
    for port_var in ("AUTH_PORT", "AUTH_HTTP_PORT", "MONITORING_PORT", "MONITORING_HTTP_PORT",
                     "INFERENCE_PRODUCTION_PORT", "INFERENCE_PRODUCTION_HTTP_PORT",
                     "INFERENCE_STAGING_PORT", "INFERENCE_STAGING_HTTP_PORT"):
        env[port_var] = "0"
    (workdir / "var").mkdir(parents=True, exist_ok=True)
    return env


def wait_serving(address: str, timeout: float, service: str = "", process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before {address} served")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout}s")


class ServiceProcess:
    """`python -m services.<name>` as a child process with its own log file."""

    def __init__(self, name: str, module: str, env: dict[str, str], workdir: pathlib.Path, args: tuple[str, ...] = ()):
        self.name = name
        self.workdir = workdir
        # under PORTS_DIR (as `make run` starts them) a process reports its ports where its peers look them up
        ports_dir = env.get("PORTS_DIR")
        self.port_file = pathlib.Path(ports_dir) / f"{name}.json" if ports_dir else workdir / f"{name}.port"
        self.log_path = workdir / f"{name}.log"
        self.port_file.unlink(missing_ok=True)
        self.env = dict(env, PORT_FILE=str(self.port_file))
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        self.port = self.http_port = 0
        self.internal_seen: dict[str, float] = {}  # INTERNAL answers by service at its last /metrics scrape

    def wait_ready(self, timeout: float = 60.0) -> "ServiceProcess":
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not bind (exit {self.process.poll()}):\n{self.logs()[-4000:]}")
            time.sleep(0.05)
        ports = json.loads(self.port_file.read_text())
        self.port, self.http_port = ports["grpc"], ports["http"]
        LEDGER.watch(self)
        try:
            wait_serving(self.address, max(1.0, deadline - time.monotonic()), process=self.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{self.name}: {exc}\n{self.logs()[-4000:]}") from None
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        LEDGER.retire(self)
        terminate(self.process, timeout)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        LEDGER.retire(self)
        self.process.kill()
        self.process.wait()
        self._log.close()


def terminate(process: subprocess.Popen, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL if it is still running after `timeout`; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def run_module(module: str, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a CLI (training, create-admin, …) to completion, raising with its output on failure."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done
