"""The `make run` banner's commands copy-paste: each line after the prompt, run by bash exactly as printed, works
against the running suite (the API key read by `$(cat …)` must reach the gateway, not the text `$(cat …)`).
tests/e2e/test_make_run.py runs the banner a real `make run` printed the same way."""
from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess

import pytest

from tools.run_suite import BANNER_PROMPT, banner

pytestmark = pytest.mark.integration


def banner_commands(text: str) -> list[str]:
    return [line.strip().removeprefix(BANNER_PROMPT) for line in text.splitlines()
            if line.strip().startswith(BANNER_PROMPT)]


def run_banner_commands(text: str) -> list[str]:
    """Each banner command through bash as printed; their outputs (each must exit 0)."""
    outputs = []
    for command in banner_commands(text):
        shlex.split(command)  # balanced quotes
        done = subprocess.run(["bash", "-c", "set -euo pipefail\n" + command], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout)
    return outputs


def check_outputs(outputs: list[str]) -> None:
    healthz, listed = outputs
    assert json.loads(healthz)["status"] == "SERVING"
    assert {"churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService"} <= set(
        listed.split())


def test_banner_commands_run_as_printed(suite, tmp_path):
    secrets = tmp_path / "secrets dir"  # a space in the path: the quoting must hold it
    secrets.mkdir()
    (secrets / "api_key").write_text(suite.settings.api_key + "\n")
    settings = dataclasses.replace(suite.settings, gateway_port=suite.gateway.port, secrets_dir=secrets)
    text = banner(settings)
    assert len(banner_commands(text)) == 2
    check_outputs(run_banner_commands(text))


def test_a_single_quoted_key_would_be_refused(suite, tmp_path):
    """The defect the banner had: the key inside single quotes is sent as the text `$(cat …)`."""
    (tmp_path / "api_key").write_text(suite.settings.api_key)
    command = banner_commands(banner(dataclasses.replace(suite.settings, gateway_port=suite.gateway.port,
                                                         secrets_dir=tmp_path)))[1]
    broken = command.replace('"x-api-key: $(cat', "'x-api-key: $(cat").replace('api_key)"', "api_key)'")
    assert broken != command
    done = subprocess.run(["bash", "-c", broken], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "Unauthenticated" in done.stderr + done.stdout, done.stderr
