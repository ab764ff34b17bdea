"""`make run` as a user runs it, on port 0 everywhere (nothing reserved): `make model` trains and registers once,
first-run secrets, then tools/run_suite.py starts the Procfile with supervisord, waits until everything is healthy
and prints the real ports; the suite serves through Envoy. Then issue 13 item 12's chaos test on the same run: at
canary 50 with 4 concurrent callers through the gateway, a kill -9 of the canary is logged and it is restarted on the
port it had within 30 s while under 0.1 % of predictions fail (its share falls back to production); a killed Envoy
comes back on the listener clients call. Ctrl-C stops every process cleanly, and a second start keeps the secrets.

One `make run` for both stories: each start of the whole suite costs about half a minute of `make test`."""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from churn.v1 import inference_pb2, inference_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.e2e.test_banner import check_outputs, run_banner_commands
from tests.harness import ROOT, base_env

pytestmark = pytest.mark.integration
PROCESSES = ("auth", "monitoring", "inference_production", "inference_staging", "gateway")


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`make <target>` with this interpreter's virtualenv, which the `make test` running this already set up
    (`-o` keeps make from reinstalling it)."""
    venv = pathlib.Path(sys.executable).parent.parent
    return subprocess.run(["make", "--no-print-directory", target, f"VENV={venv}", "-o", f"{venv}/.installed"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1
        except grpc.RpcError:
            return False


def healthz(gateway: str) -> bool:
    try:
        return urllib.request.urlopen(f"{gateway}/healthz", timeout=2).status == 200
    except OSError:
        return False


def banner_ports(text: str) -> dict[str, int]:
    """The ports the banner prints: gateway, admin, and the gRPC port of each service."""
    found = {}
    for name, pattern in (("gateway", r"gateway \(gRPC h2c \+ REST\)\s+http://127\.0\.0\.1:(\d+)"),
                          ("admin", r"Envoy admin \(loopback\)\s+http://127\.0\.0\.1:(\d+)"),
                          ("auth", r"\n  auth\s+grpc 127\.0\.0\.1:(\d+)"),
                          ("monitoring", r"\n  monitoring\s+grpc 127\.0\.0\.1:(\d+)"),
                          ("inference_production", r"inference production\s+grpc 127\.0\.0\.1:(\d+)"),
                          ("inference_staging", r"inference staging\s+grpc 127\.0\.0\.1:(\d+)")):
        match = re.search(pattern, text)
        assert match, f"{name} missing from the banner:\n{text[-3000:]}"
        found[name] = int(match.group(1))
    return found


def banner_done(lines: list[str]) -> bool:
    """The banner has been printed to its end: the blank line after "churn suite is up" and its commands."""
    up = next((i for i, line in enumerate(lines) if "churn suite is up" in line), None)
    return up is not None and any(not line.strip() for line in lines[up + 1:])


def supervised_pid(env: dict[str, str], name: str) -> int:
    config = pathlib.Path(env["DATA_DIR"]) / "supervisor" / "supervisord.conf"
    return int(subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(config), "pid", name],
                              capture_output=True, text=True, timeout=10).stdout)


class Load:
    """4 concurrent callers through the gateway with the service token, as an outside generator would."""

    def __init__(self, gateway: str, metadata, customers):
        self.channel = grpc.insecure_channel(gateway)
        self.stub = inference_pb2_grpc.InferenceServiceStub(self.channel)
        self.metadata, self.customers = metadata, customers
        self.counts = {"ok": 0, "failed": 0}
        self.stop, self.counted = threading.Event(), threading.Lock()
        self.workers = [threading.Thread(target=self.call, args=(w,), daemon=True) for w in range(4)]

    def call(self, worker: int) -> None:
        i = worker
        while not self.stop.is_set():
            try:
                self.stub.Predict(inference_pb2.PredictRequest(customer=self.customers[i % 500]),
                                  metadata=self.metadata, timeout=10)
                outcome = "ok"
            except grpc.RpcError:
                outcome = "failed"
            with self.counted:
                self.counts[outcome] += 1
            i += 4

    def __enter__(self) -> "Load":
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(15)
        self.channel.close()


def test_make_run_on_port_0_serves_restarts_killed_processes_and_stops(tmp_path, customers):
    env = base_env(tmp_path)  # every backend port 0
    env.update(GATEWAY_PORT="0", ENVOY_ADMIN_PORT="0", ARGON2_TIME_COST="1", ARGON2_MEMORY_KIB="1024",
               READY_TIMEOUT_SECONDS="180", CANARY_PERCENT="50", SERVICE_PREDICT_RATE_PER_MINUTE="1000000")
    for name in ("API_KEY", "OPS_API_KEY"):  # as on a fresh machine: init_secrets generates them
        env.pop(name)
    # `make model` for real: an empty DATA_DIR, so it trains and registers both aliases; then it does nothing
    trained = make("model", env)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "alias churn-model@production" in trained.stdout and "alias churn-model@staging" in trained.stdout
    again = make("model", env)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]

    done = subprocess.run([sys.executable, "tools/init_secrets.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    secrets_dir = tmp_path / "secrets"
    assert oct(secrets_dir.stat().st_mode & 0o777) == "0o700"
    for name in ("api_key", "ops_api_key", "admin_password", "service_token", "monitoring_token"):
        assert oct((secrets_dir / name).stat().st_mode & 0o777) == "0o600", name

    runner = subprocess.Popen([sys.executable, "-m", "tools.run_suite"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(runner.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 200
        while not banner_done(lines):  # the blank line that ends the banner, after its commands
            assert time.monotonic() < deadline and runner.poll() is None, "".join(lines[-60:])
            time.sleep(0.2)
        ports = banner_ports("".join(lines))
        assert 0 not in ports.values() and len(set(ports.values())) == len(ports), ports
        reported = {name: json.loads((tmp_path / "var" / "ports" / f"{name}.json").read_text())["grpc"]
                    for name in ("auth", "monitoring", "inference_production", "inference_staging", "gateway")}
        assert reported == {name: ports[name] for name in reported}  # the banner prints the bound ports
        gateway = f"127.0.0.1:{ports['gateway']}"
        assert urllib.request.urlopen(f"http://{gateway}/healthz", timeout=5).status == 200
        keys = {name: (secrets_dir / name).read_text().strip() for name in ("api_key", "service_token")}
        login = urllib.request.Request(
            f"http://{gateway}/v1/auth/token", method="POST",
            data=json.dumps({"username": "admin",
                             "password": (secrets_dir / "admin_password").read_text().strip()}).encode(),
            headers={"x-api-key": keys["api_key"], "content-type": "application/json"})
        assert json.loads(urllib.request.urlopen(login, timeout=10).read())["access_token"]
        check_outputs(run_banner_commands("".join(lines)))  # the banner's commands, pasted as printed

        # kill -9 of the canary under load: restarted by supervisord on the port Envoy's config names
        staging = f"127.0.0.1:{ports['inference_staging']}"
        metadata = (("x-api-key", keys["api_key"]), ("authorization", f"Bearer {keys['service_token']}"))
        with Load(gateway, metadata, customers) as load:
            time.sleep(2)
            os.kill(supervised_pid(env, "inference_staging"), signal.SIGKILL)
            killed_at, back_at = time.monotonic(), None
            while time.monotonic() - killed_at < 60 and back_at is None:
                time.sleep(0.5)
                if serving(staging):
                    back_at = time.monotonic()
            time.sleep(2)  # and a little while after it is back
        assert back_at is not None and back_at - killed_at < 30, "staging was not serving again within 30 s"
        total = load.counts["ok"] + load.counts["failed"]
        print(f"kill -9 of staging at canary 50: {load.counts['failed']} failed of {total} predictions; staging "
              f"back after {back_at - killed_at:.1f} s")
        assert total > 100 and load.counts["failed"] / total < 0.001, load.counts
        text = "".join(lines)
        assert "exited: inference_staging (terminated by SIGKILL" in text and "spawned: 'inference_staging'" in text
        assert all(serving(f"127.0.0.1:{ports[name]}") for name in ("inference_production", "inference_staging"))

        # a killed Envoy comes back on the same listener (and admin: monitoring still sets the weight there)
        os.kill(supervised_pid(env, "gateway"), signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not healthz(f"http://{gateway}"):
            assert time.monotonic() < deadline, "".join(lines[-40:])
            time.sleep(0.5)
        assert "exited: gateway (terminated by SIGKILL" in "".join(lines)
        assert urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/ready", timeout=5).status == 200
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone: the assertion above says why
            os.killpg(runner.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        runner.wait(timeout=90)
        reader.join(5)
    text = "".join(lines)
    assert runner.returncode == 0, text[-3000:]
    for name in PROCESSES:  # supervisord's line for a process that exited by itself after its SIGTERM
        assert f"stopped: {name} (exit status 0)" in text, text[-3000:]

    # A second `make run` keeps the secrets (and the admin) it made the first time.
    kept = {name: (secrets_dir / name).read_text() for name in ("api_key", "ops_api_key", "admin_password")}
    again = subprocess.run([sys.executable, "tools/init_secrets.py"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already exists" in again.stdout
    assert kept == {name: (secrets_dir / name).read_text() for name in kept}
