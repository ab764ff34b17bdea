"""`make help` lists every target with its description (the comment above it)."""
from __future__ import annotations

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_make_help_describes_every_target():
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    listed = dict(re.findall(r"^  (\S+)[ \t]*(.*)$", done.stdout, re.M))
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), re.M))
    assert targets and set(listed) == targets
    assert all(listed[name].strip() for name in ("run", "test", "help", "setup")), listed
