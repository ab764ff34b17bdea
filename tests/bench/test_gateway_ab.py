"""`python -m bench.gateway_ab` end to end, one short round: every gateway config it builds runs in the real Envoy in
front of the suite, every call is answered OK, and each gateway's own time per call is read from its log."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from services.common import mlflow_config
from tests.harness import ROOT

pytestmark = pytest.mark.integration


def test_one_round_measures_every_gateway_beside_direct(is_ci, settings, tmp_path):
    if shutil.which("h2load") is None:
        if is_ci:
            pytest.fail("h2load missing under CI=true: `make test` installs it (make bench-tools)")
        pytest.skip("h2load not installed (make bench-tools)")
    out = tmp_path / "gateway-ab.md"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]))
    # half-second points (and warm-ups); one worker per inference instance, as every test suite runs them (the
    # worker pool has its own test, tests/e2e/test_inference_workers.py)
    done = subprocess.run([sys.executable, "-m", "bench.gateway_ab", "--concurrency", "1", "--rounds", "1",
                           "--seconds", "0.5", "--inference-workers", "1", "--workdir", str(tmp_path / "work"),
                           "--out", str(out), "--tracking-uri", mlflow_config.tracking_uri(settings)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    rows = {cells[1]: cells for cells in (line.strip("|").split("|") for line in out.read_text().splitlines()
                                          if re.match(r"\| 1 \|", line))}
    assert set(rows) == {" direct ", " rendered ", " router only ", " floor "}  # none with calls "not OK"
    for name in (" rendered ", " router only ", " floor "):
        own_us = int(rows[name][-1].replace(",", ""))
        assert own_us > 0, rows[name]  # the timing log was written and read
