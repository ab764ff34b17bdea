"""Print the git input `buf breaking` compares the contracts with (`make lint-protos`, tests/unit/test_buf.py).

On a branch: the merge-base with `main`, so every commit of the branch (and the working tree) is judged against the
contracts main already published. On main itself (CI's fresh clone) that merge-base is HEAD, so the reference is the
previous commit, HEAD~1 (the first parent: for a merge, main before the merge). Prints nothing and exits 1 when no
such commit exists (a shallow or one-commit clone): callers decide whether that may be skipped.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commit(*args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def reference() -> str | None:
    """`.git#ref=<sha>` of the commit the contracts must stay compatible with, or None when history lacks it."""
    head = _commit("rev-parse", "--verify", "HEAD^{commit}")
    base = _commit("merge-base", "HEAD", "main")
    if base is None or base == head:
        base = _commit("rev-parse", "--verify", "--quiet", "HEAD~1^{commit}")
    return f".git#ref={base}" if base else None


def main() -> int:
    found = reference()
    if found is None:
        print("no commit to compare the contracts with (shallow clone?)", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
