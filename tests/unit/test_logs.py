"""The process log is JSON lines only: a library's warning (numpy's "invalid value encountered in divide" from the
drift and canary statistics) goes through the same formatter instead of raw text on stderr."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.harness import ROOT

SCRIPT = """
import numpy as np
from services.common import logs
logs.configure("churn.test").info("before")
np.array([0.0]) / np.array([0.0])
"""


def test_a_library_warning_is_a_json_line():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert [line["msg"] for line in lines][0] == "before"
    warning = lines[1]
    assert (warning["level"], warning["logger"]) == ("warning", "py.warnings")
    assert "invalid value encountered in divide" in warning["msg"]

