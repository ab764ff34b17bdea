"""`python -m services.auth` as a real process: bootstrap admin from the environment, health, reflection
(grpcurl), JWKS and /metrics on the HTTP side port, the CLI commands against the same store, graceful SIGTERM,
and no secret in its log."""
from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import urllib.request

import grpc
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churn.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from services.auth.users import UserStore
from services.common.settings import Settings
from tests.auth.conftest import CHEAP_ARGON2, PASSWORD
from tests.harness import ROOT, ServiceProcess, base_env, run_module

pytestmark = pytest.mark.integration
GRPCURL = pathlib.Path(sys.executable).parent / "grpcurl"


@pytest.fixture(scope="module")
def proc_env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth-proc")
    env = base_env(workdir)
    password_file = workdir / "admin_password"
    password_file.write_text(PASSWORD + "\n")
    env.update(CHEAP_ARGON2, BOOTSTRAP_ADMIN_USERNAME="root", BOOTSTRAP_ADMIN_PASSWORD_FILE=str(password_file),
               KEY_PROPAGATION_SECONDS="1")
    env.pop("USERS_DATABASE_URL", None)
    return env, workdir


@pytest.fixture(scope="module")
def server(proc_env):
    env, workdir = proc_env
    service = ServiceProcess("auth", "services.auth", env, workdir).wait_ready(timeout=30)
    yield service
    service.stop()


def _stub(server):
    return auth_pb2_grpc.AuthServiceStub(grpc.insecure_channel(server.address))


def test_serves_health_reflection_jwks_and_metrics(server, proc_env):
    env, _ = proc_env
    listed = subprocess.run([str(GRPCURL), "-plaintext", server.address, "list"], capture_output=True, text=True,
                            timeout=20, check=True).stdout.split()
    assert {"churn.v1.AuthService", "grpc.health.v1.Health"} <= set(listed)
    described = subprocess.run([str(GRPCURL), "-plaintext", server.address, "describe", "churn.v1.AuthService"],
                               capture_output=True, text=True, timeout=20, check=True).stdout
    assert "rpc Login" in described and "rpc RotateKeys" in described
    health = subprocess.run([str(GRPCURL), "-plaintext", "-d", '{"service": "churn.v1.AuthService"}',
                             server.address, "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=20, check=True).stdout
    assert json.loads(health)["status"] == "SERVING"

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/.well-known/jwks.json", timeout=5) as reply:
        assert reply.headers["Content-Type"] == "application/json"
        assert json.loads(reply.read())["keys"]
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for name in ("churn_auth_logins_total", "churn_auth_registrations_total", "churn_auth_active_users"):
        assert name in text


def test_bootstrap_admin_logs_in_over_grpcurl(server, proc_env):
    env, _ = proc_env
    body = json.dumps({"username": "root", "password": PASSWORD})
    done = subprocess.run([str(GRPCURL), "-plaintext", "-H", f"x-api-key: {env['API_KEY']}", "-v", "-d", body,
                           server.address, "churn.v1.AuthService/Login"],
                          capture_output=True, text=True, timeout=20, check=True).stdout
    assert "set-cookie: access_token=" in done and "HttpOnly" in done
    assert '"role": "ROLE_ADMIN"' in done


def test_cli_commands_share_the_store_with_the_server(server, proc_env):
    env, workdir = proc_env
    stub = _stub(server)
    client = (("x-api-key", env["API_KEY"]),)

    admin_pw = workdir / "second_admin_password"
    admin_pw.write_text("Another-Admin-77\n")
    run_module("services.auth", env, "create-admin", "--username", "ops-admin", "--password-file", str(admin_pw))
    assert stub.Login(auth_pb2.LoginRequest(username="ops-admin", password="Another-Admin-77"), metadata=client,
                      timeout=5).role == common_pb2.ROLE_ADMIN

    token_file = workdir / "tokens" / "outbox.token"
    run_module("services.auth", env, "create-service-token", "--name", "outbox", "--output", str(token_file))
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    session = stub.VerifySession(auth_pb2.VerifySessionRequest(), timeout=5,
                                 metadata=client + (("authorization", f"Bearer {token}"),))
    assert (session.username, session.role) == ("service:outbox", common_pb2.ROLE_SERVICE)

    run_module("services.auth", env, "revoke-service-token", "--name", "outbox")
    with pytest.raises(grpc.RpcError) as revoked:
        stub.VerifySession(auth_pb2.VerifySessionRequest(), timeout=5,
                           metadata=client + (("authorization", f"Bearer {token}"),))
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as reply:
        scraped = {s.name: s.value for family in text_string_to_metric_families(reply.read().decode())
                   for s in family.samples}
    store = UserStore(Settings.from_env(env).users_database_url)
    try:
        assert scraped["churn_auth_active_users"] == store.count_users(approved=True) >= 2  # root, ops-admin
    finally:
        store.close()

    rotated = json.loads(run_module("services.auth", env, "rotate-keys").stdout)
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/.well-known/jwks.json", timeout=5) as reply:
        kids = [key["kid"] for key in json.loads(reply.read())["keys"]]
    assert rotated["next_kid"] in kids and rotated["signing_kid"] in kids
    assert jwt.get_unverified_header(token)["kid"] in kids  # its key stays until the token expires


def test_create_admin_refuses_a_duplicate_and_missing_password(server, proc_env):
    """`server` first: its bootstrap creates `root` (run before it, create-admin made `root` with another password
    and the module's later logins failed in random order)."""
    env, _ = proc_env
    with pytest.raises(RuntimeError, match="already exists"):
        run_module("services.auth", dict(env, ADMIN_PASSWORD="Whatever-Pass-1"), "create-admin", "--username", "root")
    with pytest.raises(RuntimeError, match="no password"):
        run_module("services.auth", {k: v for k, v in env.items() if k != "ADMIN_PASSWORD"}, "create-admin",
                   "--username", "nopass")


def test_refuses_to_serve_without_api_keys(tmp_path):
    env = base_env(tmp_path)
    env.update(API_KEY="", OPS_API_KEY="")
    done = subprocess.run([sys.executable, "-m", "services.auth"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode != 0 and "API_KEY and OPS_API_KEY must be set" in done.stderr


def test_sigterm_drains_and_logs_hold_no_secret(proc_env):
    env, workdir = proc_env
    service = ServiceProcess("auth-term", "services.auth", env, workdir).wait_ready(timeout=30)
    login = _stub(service).Login(auth_pb2.LoginRequest(username="root", password=PASSWORD),
                                 metadata=(("x-api-key", env["API_KEY"]),), timeout=5)
    assert service.stop() == 0
    logs = service.logs()
    assert '"msg": "stopped"' in logs
    for secret in (PASSWORD, login.access_token, env["API_KEY"], env["OPS_API_KEY"]):
        assert secret not in logs
    assert os.environ.get("ADMIN_PASSWORD") is None or os.environ["ADMIN_PASSWORD"] not in logs
