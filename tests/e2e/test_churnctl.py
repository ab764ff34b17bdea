"""churnctl against the running suite, as a user runs it (a subprocess, its own config dir): login caches the token
0600; predict from JSON and from a Telco CSV row agree; score writes every row in chunks; explain, the drift report,
canary get/set, users list/approve and model versions work; mistakes are one-line errors naming the field."""
from __future__ import annotations

import csv
import json
import os
import pathlib
import secrets
import subprocess
import sys
import time
import tomllib
import uuid

import pytest
from google.protobuf import json_format

from churn.v1 import auth_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
TELCO_CSV = ROOT / "data" / "telco_churn.csv"


@pytest.fixture
def churnctl(suite, tmp_path):
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"), CHURN_GATEWAY=suite.gateway.address,
               CHURN_API_KEY=suite.settings.api_key, CHURN_OPS_API_KEY=suite.settings.ops_api_key,
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]), COLUMNS="200")

    def run(*args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "churnctl", *args], input=stdin, env=env, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    run.config = tmp_path / "config" / "churnctl"
    run.tmp = tmp_path
    return run


@pytest.fixture
def logged_in(suite, churnctl):
    churnctl("login", "--username", "admin", "--password-stdin", stdin=suite.admin_password + "\n")
    return churnctl


def test_console_script_names_the_cli():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["churnctl"] == "churnctl.cli:main"
    assert "churnctl" in project["tool"]["setuptools"]["packages"]


def test_login_caches_the_token_owner_only(suite, logged_in):
    session = logged_in.config / "session.json"
    assert session.stat().st_mode & 0o777 == 0o600 and logged_in.config.stat().st_mode & 0o777 == 0o700
    saved = json.loads(session.read_text())
    assert saved["token"] and saved["username"] == "admin" and saved["expires_at"] > time.time()


def test_predict_from_json_and_from_a_csv_row_agree(customers, logged_in):
    line = TELCO_CSV.read_text().splitlines()[1]  # customers[0] in the Telco spellings
    from_json = json.loads(logged_in("predict", json_format.MessageToJson(customers[0])).stdout)
    from_csv = json.loads(logged_in("predict", "--csv", line, "--reasons", "2").stdout)
    assert from_json["customer_id"] == from_csv["customer_id"] == customers[0].customer_id
    assert from_json["probability"] == pytest.approx(from_csv["probability"], abs=1e-9)
    assert from_json["model"]["alias"] == "production" and len(from_csv["reasons"]) == 2
    explained = json.loads(logged_in("explain", "--csv", line).stdout)
    assert explained["explanations"][0]["contributions"]


def test_score_writes_every_row_in_chunks(logged_in):
    lines = TELCO_CSV.read_text().splitlines()[:131]
    source = logged_in.tmp / "in.csv"
    source.write_text("\n".join(lines) + "\n")
    done = logged_in("score", str(source), "--out", "scored.csv", "--chunk", "50")
    rows = list(csv.DictReader((logged_in.tmp / "scored.csv").open()))
    assert len(rows) == 130 and "130 rows scored" in done.stderr
    assert [r["customerID"] for r in rows] == [line.split(",")[0] for line in lines[1:]]
    assert all(0 <= float(r["probability"]) <= 1 and r["Churn"] in ("Yes", "No") for r in rows)


def test_drift_report_download(logged_in):
    deadline = time.monotonic() + 60
    while True:  # needs 50 logged predictions; the outbox ships them in the background
        done = logged_in("drift-report", "--format", "json", "--out", "drift.json", check=False)
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        logged_in("score", str(TELCO_CSV), "--out", "all.csv", "--chunk", "2000")
        time.sleep(2)
    assert done.returncode == 0, done.stderr
    assert "drift share" in done.stderr and json.loads((logged_in.tmp / "drift.json").read_text())


def test_canary_users_and_models(suite, logged_in):
    current = logged_in("canary", "get").stdout.strip()
    assert logged_in("canary", "set", current).stdout.strip() == current
    username = f"cli-{uuid.uuid4().hex[:8]}"
    auth, _, _ = suite.stubs()
    auth.Register(auth_pb2.RegisterRequest(username=username, password="pw-" + secrets.token_urlsafe(12)),
                  metadata=suite.md(), timeout=10)
    assert username in logged_in("users", "list", "--pending").stdout
    assert f"{username}: approved" in logged_in("users", "approve", username).stdout
    assert username not in logged_in("users", "list", "--pending").stdout
    listing = logged_in("models").stdout
    assert "production" in listing and "accuracy=" in listing


def test_mistakes_are_one_line_errors(churnctl, logged_in):
    fields = TELCO_CSV.read_text().splitlines()[1].split(",")
    fields[5] = "many"  # tenure
    bad = logged_in("predict", "--csv", ",".join(fields), check=False)
    assert bad.returncode == 1 and "tenure" in bad.stderr and "Traceback" not in bad.stderr
    wrong = logged_in("canary", "set", "101", check=False)
    assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr and "Traceback" not in wrong.stderr
    (logged_in.config / "session.json").unlink()
    anonymous = churnctl("models", check=False)
    assert anonymous.returncode == 1 and "churnctl login" in anonymous.stderr
