"""First-run secrets (DESIGN clarification 18): no default secret ever works, so `make run` generates them.

Creates the git-ignored secrets folder (mode 0700; every file 0600) with
  api_key, ops_api_key     the client and ops API keys (x-api-key), unless set in the environment
  gateway_secret           what Envoy stamps on forwarded calls (x-churn-gateway), unless set in the environment
  signing_key_secret       encrypts auth's signing keys in the users store, unless set in the environment
  admin_password           the first admin's password (user $ADMIN_USERNAME, default "admin")
  service_token            a `service` role token for the inference outbox shipper (and internal callers)
  monitoring_token         monitoring's own `reloader` role token: ReloadModel only, for the reloads it starts
                           itself (a finished Retrain, the automatic canary's promote)
  database_password        PostgreSQL's password for docker-compose and Kubernetes (the `churn-secrets` keys are
                           these file names); local runs use SQLite or $*_DATABASE_URL and never read it
then creates the admin in the users store (`python -m services.auth create-admin`) when it does not exist yet and
mints fresh service and monitoring tokens (`create-service-token`, revoking the previous ones: the store may be new
and its old signing keys gone). Idempotent: existing keys and passwords are kept. Prints where everything is.
"""
from __future__ import annotations

import os
import pathlib
import secrets
import subprocess
import sys

from services.common.settings import ROOT, Settings

SERVICE_TOKEN_NAME = "inference-outbox"
# file name -> (principal name, role) of the service tokens minted on every run
SERVICE_TOKENS = {"service_token": (SERVICE_TOKEN_NAME, "service"), "monitoring_token": ("monitoring", "reloader")}


def _write_secret(path: pathlib.Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")


def ensure_secret(folder: pathlib.Path, name: str, make) -> tuple[pathlib.Path, bool]:
    path = folder / name
    if path.exists() and path.read_text().strip():
        path.chmod(0o600)
        return path, False
    _write_secret(path, make())
    return path, True


def _auth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.auth", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def init_secrets(env: dict[str, str] | None = None, *, with_auth: bool = True) -> dict[str, pathlib.Path]:
    env = dict(os.environ if env is None else env)
    settings = Settings.from_env(env)
    folder = settings.secrets_dir
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    created: dict[str, pathlib.Path] = {}
    report = []
    for name, variable in (("api_key", "API_KEY"), ("ops_api_key", "OPS_API_KEY"), ("gateway_secret", "GATEWAY_SECRET"),
                           ("signing_key_secret", "SIGNING_KEY_SECRET")):
        if env.get(variable):
            report.append(f"  {name:15} from ${variable}")
            continue
        path, new = ensure_secret(folder, name, lambda: secrets.token_urlsafe(32))
        created[name] = path
        report.append(f"  {name:15} {path}{' (new)' if new else ''}")
    path, new = ensure_secret(folder, "database_password", lambda: secrets.token_urlsafe(24))
    report.append(f"  {'database_password':15} {path}{' (new)' if new else ''} (compose / Kubernetes PostgreSQL)")
    password_path, new = ensure_secret(folder, "admin_password", lambda: secrets.token_urlsafe(18))
    created["admin_password"] = password_path
    username = env.get("ADMIN_USERNAME", "admin")
    report.append(f"  {'admin_password':15} {password_path}{' (new)' if new else ''} (user {username!r})")

    if with_auth:
        env.setdefault("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "gen")]))
        done = _auth(env, "create-admin", "--username", username, "--password-file", str(password_path))
        if done.returncode == 0:
            report.append(f"  admin {username!r} created in {settings.users_database_url}")
        elif "exist" in (done.stderr + done.stdout).lower():
            report.append(f"  admin {username!r} already exists")
        else:
            raise SystemExit(f"create-admin failed:\n{done.stdout}{done.stderr}")
        for file_name, (name, role) in SERVICE_TOKENS.items():
            token_path = folder / file_name
            _auth(env, "revoke-service-token", "--name", name)
            done = _auth(env, "create-service-token", "--name", name, "--role", role, "--output", str(token_path))
            if done.returncode != 0:
                raise SystemExit(f"create-service-token failed:\n{done.stdout}{done.stderr}")
            created[file_name] = token_path
            report.append(f"  {file_name:15} {token_path} (role {role}, name {name!r})")

    print(f"secrets in {folder} (mode 0700, files 0600; git-ignored):")
    print("\n".join(report))
    return created


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="tools/init_secrets.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    from tools.run_suite import load_dotenv

    load_dotenv()
    init_secrets()
    return 0


if __name__ == "__main__":
    sys.exit(main())
