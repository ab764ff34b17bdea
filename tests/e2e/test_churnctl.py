"""churnctl against the running suite, as a user runs it (a subprocess, its own config dir): login caches the token
0600; predict from JSON and from a Telco CSV row agree; score writes every row in chunks; explain, the drift report,
canary get/set, users list/approve and model versions work; the lifecycle commands (retrain followed to the end,
training-run, promote, rollback, events, predictions, canary analyze) move and show the real registry; mistakes
are one-line errors naming the field."""
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
    assert logged_in("shadow", "get").stdout.strip() == "0"
    try:
        assert logged_in("shadow", "set", "20").stdout.strip() == "20"
        assert suite.gateway.runtime()["routing.shadow_percent"] == "20"
        assert logged_in("shadow", "get").stdout.strip() == "20"
    finally:
        assert logged_in("shadow", "set", "0").stdout.strip() == "0"
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
    for share in ("canary", "shadow"):
        wrong = logged_in(share, "set", "101", check=False)
        assert wrong.returncode == 1 and "INVALID_ARGUMENT" in wrong.stderr and "Traceback" not in wrong.stderr
    (logged_in.config / "session.json").unlink()
    anonymous = churnctl("models", check=False)
    assert anonymous.returncode == 1 and "churnctl login" in anonymous.stderr


@pytest.fixture
def restored_aliases(suite):
    """The lifecycle commands move the shared suite's aliases: put them back (and reload) however the test ends."""
    from services.common import mlflow_config
    from services.common import model_registry as R

    registry = R.ModelRegistry(mlflow_config.tracking_uri(suite.settings), suite.settings.model_name)
    before = {alias: registry.version_for(alias) for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING)}
    had_previous = R.ALIAS_PREVIOUS in (registry.client.get_registered_model(registry.name).aliases or {})
    yield registry
    for alias, version in before.items():
        registry.set_alias(alias, version)
    if not had_previous and R.ALIAS_PREVIOUS in (registry.client.get_registered_model(registry.name).aliases or {}):
        registry.client.delete_registered_model_alias(registry.name, R.ALIAS_PREVIOUS)
    admin = suite.admin_token()
    for alias in before:
        reloaded = suite.rest("POST", "/v1/model:reload", {"alias": alias}, token=admin, key="ops",
                              headers={"x-churn-alias": alias})
        assert reloaded.status == 200, reloaded.body


def test_lifecycle_commands(suite, logged_in, restored_aliases, customers):
    """retrain (followed to SUCCEEDED), training-run, promote, rollback, events, predictions, canary analyze."""
    registry = restored_aliases
    new = str(max(int(v.version) for v in registry.versions()) + 1)
    production = registry.version_for("production")
    admin = suite.admin_token()
    upload = suite.rest("POST", "/v1/data/training?name=cli", b"\n".join(TELCO_CSV.read_bytes().splitlines()[:301]),
                        token=admin, key="ops", headers={"content-type": "text/csv"})
    assert upload.status == 200, upload.body
    dataset = upload.json()["dataset_id"]

    trained = logged_in("retrain", "--dataset", dataset, "--flavor", "xgboost", "--poll", "0.5")
    run = json.loads(trained.stdout)
    assert run["state"] == "TRAINING_STATE_SUCCEEDED" and run["model_version"] == new and run["progress"] == 1
    assert run["datasets"] == [{"source": "upload", "dataset_id": dataset, "name": "cli", "rows": 300}]
    assert f"training run {run['run_id']} started from production version {production} on 300 rows" in trained.stderr
    assert f"version {new} registered as staging" in trained.stderr and "100%" in trained.stderr
    assert registry.version_for("staging") == new

    status = logged_in("training-run", run["run_id"])
    assert json.loads(status.stdout)["model_version"] == new and f"SUCCEEDED 100%: version {new}" in status.stderr

    refused = logged_in("promote", "--version", "999999", check=False)
    assert refused.returncode == 1 and f"staging is version {new}, not 999999" in refused.stderr
    promoted = json.loads(logged_in("promote", "--version", new).stdout)
    assert (promoted["production_version"], promoted["previous_version"], promoted["changed"]) == (
        new, production, True)
    assert registry.version_for("production") == new
    rolled = json.loads(logged_in("rollback").stdout)
    assert (rolled["production_version"], rolled["rolled_back_version"], rolled["changed"]) == (production, new, True)

    listed = logged_in("events", "--limit", "4").stdout
    kinds = [line.split("│")[3].strip() for line in listed.splitlines() if line.startswith("│")]
    kinds = [kind for kind in kinds if kind]  # a long detail wraps onto a second table line
    assert kinds == ["rollback", "promote", "retrain_finished", "retrain_started"], listed

    # the prediction log, filtered: a fresh customer id predicted through the gateway, found by id, alias, version
    predicted = logged_in("predict", json_format.MessageToJson(customers[7]))
    prediction = json.loads(predicted.stdout)
    deadline = time.monotonic() + 30
    while True:
        found = logged_in("predictions", "--customer-id", customers[7].customer_id, "--alias", "production",
                          "--model-version", production, "--no-shadow", "--since", "2000-01-01", "--limit", "50")
        if prediction["prediction_id"][:6] in found.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert prediction["prediction_id"][:6] in found.stdout, found.stdout
    rows = [line for line in found.stdout.splitlines() if line.startswith("│")]
    assert rows and all(customers[7].customer_id[:6] in row for row in rows)
    none = logged_in("predictions", "--customer-id", customers[7].customer_id, "--model-version", "999999")
    assert not [line for line in none.stdout.splitlines() if line.startswith("│")]
    bad_time = logged_in("predictions", "--since", "yesterday", check=False)
    assert bad_time.returncode == 1 and "--since" in bad_time.stderr and "Traceback" not in bad_time.stderr

    analysis = logged_in("canary", "analyze", "--window-minutes", "30").stdout
    assert "verdict: " in analysis and "production" in analysis and "Jensen-Shannon" in analysis


def test_retrain_without_a_source_is_a_one_line_error(logged_in):
    done = logged_in("retrain", check=False)
    assert done.returncode == 1 and "INVALID_ARGUMENT" in done.stderr and "include_shipped_data" in done.stderr
    assert "Traceback" not in done.stderr
