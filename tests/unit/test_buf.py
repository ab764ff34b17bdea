"""The contracts stay `buf lint`-clean (STANDARD rules) and build as one buf workspace."""
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def _buf(*args):
    assert BUF.exists(), "make setup installs buf (npm @bufbuild/buf) into .tools/"
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_protos_are_lint_clean():
    done = _buf("lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_breaking_change_against_main():
    has_main = subprocess.run(["git", "rev-parse", "--verify", "main"], cwd=ROOT, capture_output=True).returncode == 0
    if not has_main:
        pytest.skip("no local main branch to compare against")
    done = _buf("breaking", "--against", ".git#branch=main")
    assert done.returncode == 0, done.stdout + done.stderr


def test_vendored_google_protos_match_googleapis_common_protos():
    import google.api

    installed = pathlib.Path(google.api.__path__[0]).parent
    vendored = sorted((ROOT / "third_party" / "googleapis" / "google").rglob("*.proto"))
    assert vendored
    for path in vendored:
        relative = path.relative_to(ROOT / "third_party" / "googleapis" / "google")
        assert path.read_bytes() == (installed / relative).read_bytes(), relative
