"""The README's "Calling it" commands, run as written against the test suite: only the gateway address and the
secrets folder are substituted (the suite's port and keys). curl fails on any HTTP error and the shell on any
failing command, so a README command that no longer works fails this test."""
from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import TELCO_CSV
from tests.harness import ROOT

pytestmark = pytest.mark.integration
README = ROOT / "README.md"


def calling_it_block() -> str:
    section = README.read_text().split("\n## Calling it\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section holds one bash block"
    return blocks[0]


def test_readme_commands_run_against_the_suite(suite, customers, production_reference, tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name, value in (("api_key", suite.settings.api_key), ("ops_api_key", suite.settings.ops_api_key),
                        ("admin_password", suite.admin_password)):
        (secrets / name).write_text(value)
    block = calling_it_block()
    assert block.count("localhost:8080") >= 6 and "secrets/" in block
    script = block.replace("localhost:8080", suite.gateway.address).replace("secrets/", f"{secrets}/")
    prelude = 'set -euo pipefail\ncurl() { command curl --fail-with-body "$@"; echo; }\n'
    path = os.pathsep.join([str(pathlib.Path(sys.executable).parent), os.environ.get("PATH", "")])
    done = subprocess.run(["bash", "-c", prelude + script], cwd=ROOT, env=dict(os.environ, PATH=path),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"

    lines = done.stdout.splitlines()
    registered, approved, predicted, scored, labelled = (json.loads(line) for line in lines[:5])
    assert registered["user"] == {**registered["user"], "username": "ann", "approved": False}
    assert approved["user"]["approved"] is True
    assert predicted["prediction"]["customer_id"] == customers[0].customer_id == "7590-VHVEG"
    expected = production_reference.probability(customers)
    assert predicted["prediction"]["probability"] == pytest.approx(float(expected[0]), abs=1e-6)
    assert len(predicted["prediction"]["reasons"]) == 3
    labels = [line.rstrip("\r").endswith(",Yes") for line in TELCO_CSV.read_text().splitlines()[1:]]
    right = sum((p >= production_reference.threshold) == y for p, y in zip(expected, labels))
    assert len(scored["predictions"]) == len(labels) == 7043
    assert scored["accuracy"] == pytest.approx(right / len(labels), abs=1e-12)
    # the label finds 7590-VHVEG's prediction once the outbox has shipped it (asynchronous): matched or not, one row
    assert labelled["matched"] + labelled["unmatched"] == 1 and labelled["rejected"] == 0, labelled
    listed = set(lines[5:8])
    assert {"churn.v1.AuthService", "churn.v1.InferenceService", "churn.v1.MonitoringService"} <= listed
    info = json.loads("\n".join(lines[lines.index("{"):]))
    assert info["model"]["alias"] == "production"
