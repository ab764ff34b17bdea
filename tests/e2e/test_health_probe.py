"""The image's HEALTHCHECK command against the running suite: healthy for each role, unhealthy (exit 1, one line)
when nothing answers."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.e2e.envoy_process import free_port
from tests.harness import ROOT


def _probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.health_probe", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "gen")])})


@pytest.mark.parametrize("role,alias", [("auth", ""), ("monitoring", ""), ("inference", "production"),
                                        ("inference", "staging"), ("gateway", "")])
def test_probe_reports_each_running_role_healthy(suite, role, alias):
    env = dict(suite.env, GATEWAY_PORT=str(suite.gateway.port), MODEL_ALIAS=alias or "production")
    done = _probe(env, role)
    assert done.returncode == 0 and "healthy" in done.stdout, done.stdout + done.stderr


def test_probe_fails_when_nothing_answers(suite):
    done = _probe(dict(suite.env, AUTH_PORT=str(free_port())), "auth")
    assert done.returncode == 1 and "auth: " in done.stderr and "Traceback" not in done.stderr
