"""System tools the deploy tests need, installed by `make observability-tools` / `make docs-tools` (apt-get):
missing locally → skipped with that hint; missing with CI=true → the run fails instead of skipping."""
from __future__ import annotations

import os
import shutil

import pytest


def require(tool: str, target: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    message = f"{tool} not installed: run `make {target}`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
