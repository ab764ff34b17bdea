"""`make run` as a user runs it: first-run secrets, then tools/run_suite.py starts the Procfile with supervisord, waits
until everything is healthy, prints the URLs, serves through Envoy, and Ctrl-C stops every process cleanly."""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.e2e.envoy_process import free_port
from tests.e2e.test_banner import check_outputs, run_banner_commands
from tests.harness import ROOT, base_env

pytestmark = pytest.mark.integration
PORTS = ("AUTH_PORT", "AUTH_HTTP_PORT", "MONITORING_PORT", "MONITORING_HTTP_PORT", "INFERENCE_PRODUCTION_PORT",
         "INFERENCE_PRODUCTION_HTTP_PORT", "INFERENCE_STAGING_PORT", "INFERENCE_STAGING_HTTP_PORT", "GATEWAY_PORT",
         "ENVOY_ADMIN_PORT")
PROCESSES = ("auth", "monitoring", "inference_production", "inference_staging", "gateway")


def make(target: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`make <target>` with this interpreter's virtualenv, which the `make test` running this already set up
    (`-o` keeps make from reinstalling it)."""
    venv = pathlib.Path(sys.executable).parent.parent
    return subprocess.run(["make", "--no-print-directory", target, f"VENV={venv}", "-o", f"{venv}/.installed"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_make_run_starts_serves_and_stops(tmp_path):
    env = base_env(tmp_path)
    env.update({name: str(free_port()) for name in PORTS})
    env.update(ARGON2_TIME_COST="1", ARGON2_MEMORY_KIB="1024", READY_TIMEOUT_SECONDS="180")
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
    up = False
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            line = runner.stdout.readline()
            if not line:
                break
            lines.append(line)
            up = up or "churn suite is up" in line
            if up and not line.strip():  # the blank line that ends the banner, after its commands
                break
        assert any("churn suite is up" in line for line in lines), "".join(lines[-60:])
        gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
        assert urllib.request.urlopen(f"{gateway}/healthz", timeout=5).status == 200
        login = urllib.request.Request(
            f"{gateway}/v1/auth/token", method="POST",
            data=json.dumps({"username": "admin",
                             "password": (secrets_dir / "admin_password").read_text().strip()}).encode(),
            headers={"x-api-key": (secrets_dir / "api_key").read_text().strip(), "content-type": "application/json"})
        assert json.loads(urllib.request.urlopen(login, timeout=10).read())["access_token"]
        check_outputs(run_banner_commands("".join(lines)))  # the banner's commands, pasted as printed
    finally:
        os.killpg(runner.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole foreground group
        output, _ = runner.communicate(timeout=60)
        lines.append(output)
    text = "".join(lines)
    assert runner.returncode == 0, text[-3000:]
    for name in PROCESSES:  # supervisord's line for a process that exited by itself after its SIGTERM
        assert f"stopped: {name} (exit status 0)" in text, text[-3000:]

    # A second `make run` keeps the secrets (and the admin) it made the first time.
    keys = {name: (secrets_dir / name).read_text() for name in ("api_key", "ops_api_key", "admin_password")}
    again = subprocess.run([sys.executable, "tools/init_secrets.py"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already exists" in again.stdout
    assert keys == {name: (secrets_dir / name).read_text() for name in keys}
