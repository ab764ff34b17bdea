"""The contracts stay `buf lint`-clean (STANDARD rules), build as one buf workspace, and never break a published
contract: `buf breaking` against the commit tools/buf_against.py names (the merge-base with main on a branch, the
previous commit on main), a check shown to fail when an RPC is removed."""
import pathlib
import re
import shutil
import subprocess

import pytest

from tools.buf_against import reference

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def _buf(*args, cwd=ROOT):
    assert BUF.exists(), "make setup installs buf (npm @bufbuild/buf) into .tools/"
    return subprocess.run([str(BUF), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _module_copy(target: pathlib.Path) -> pathlib.Path:
    """The buf workspace (buf.yaml, protos/, third_party/) copied to `target`, outside git."""
    target.mkdir()
    shutil.copy(ROOT / "buf.yaml", target / "buf.yaml")
    shutil.copytree(ROOT / "protos", target / "protos")
    shutil.copytree(ROOT / "third_party", target / "third_party")
    return target


def test_protos_are_lint_clean():
    done = _buf("lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_breaking_change_against_the_published_contracts(is_ci):
    against = reference()
    if against is None:
        message = "no commit to compare the contracts with: CI needs a clone with history (not --depth 1)"
        if is_ci:
            pytest.fail(message)
        pytest.skip(message)
    done = _buf("breaking", "--against", against)
    assert done.returncode == 0, f"against {against}:\n{done.stdout}{done.stderr}"


def test_the_reference_is_an_earlier_commit():
    """The reference is never HEAD itself (that comparison always passes): on main it is HEAD~1."""
    against = reference()
    if against is None:
        pytest.skip("no history")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sha = against.removeprefix(".git#ref=")
    assert re.fullmatch(r"[0-9a-f]{40}", sha) and sha != head
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=ROOT)
    assert ancestor.returncode == 0


def test_removing_an_rpc_fails_the_breaking_check(tmp_path):
    published = _module_copy(tmp_path / "published")
    changed = _module_copy(tmp_path / "changed")
    auth = changed / "protos" / "churn" / "v1" / "auth.proto"
    text, removed = re.subn(r"\n  rpc RotateKeys\(.*?\n  }\n", "\n", auth.read_text(), flags=re.S)
    assert removed == 1
    auth.write_text(text)
    assert _buf("build", cwd=changed).returncode == 0
    done = _buf("breaking", "--against", str(published), cwd=changed)
    assert done.returncode != 0
    assert 'Previously present RPC "RotateKeys" on service "AuthService" was deleted.' in done.stdout


def test_renaming_a_field_fails_the_breaking_check(tmp_path):
    published = _module_copy(tmp_path / "published")
    changed = _module_copy(tmp_path / "changed")
    common = changed / "protos" / "churn" / "v1" / "common.proto"
    text, renamed = re.subn(r"\bmonthly_charges\b", "monthly_fee", common.read_text())
    assert renamed >= 1
    common.write_text(text)
    done = _buf("breaking", "--against", str(published), cwd=changed)
    assert done.returncode != 0
    assert "monthly_charges" in done.stdout


def test_vendored_google_protos_match_googleapis_common_protos():
    import google.api

    installed = pathlib.Path(google.api.__path__[0]).parent
    vendored = sorted((ROOT / "third_party" / "googleapis" / "google").rglob("*.proto"))
    assert vendored
    for path in vendored:
        relative = path.relative_to(ROOT / "third_party" / "googleapis" / "google")
        assert path.read_bytes() == (installed / relative).read_bytes(), relative
