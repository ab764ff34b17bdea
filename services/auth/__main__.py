"""`python -m services.auth [command]` — the auth service and its admin commands.

  serve (default)          gRPC on AUTH_PORT, JWKS + /metrics on AUTH_HTTP_PORT; SIGTERM drains.
  create-admin             --username NAME [--password-file FILE]; else ADMIN_PASSWORD, else a prompt.
  create-service-token     --name NAME [--role service|reloader] [--ttl-seconds N] [--output FILE (mode 0600)];
                           prints the token otherwise. `reloader` may call ReloadModel and nothing else.
  revoke-service-token     --name NAME: every token minted for NAME fails at its next session check.
  rotate-keys              publish a new signing key; it signs after KEY_PROPAGATION_SECONDS.

Passwords are never accepted as plain arguments (they would show in `ps` and shell history).
"""
from __future__ import annotations

import argparse
import datetime
import getpass
import json
import logging
import os
import pathlib
import sys

from services.common import logs
from services.common.errors import DomainError
from services.common.identity import SERVICE_ROLES
from services.common.settings import Settings

log = logging.getLogger("churn.auth")


def _serve(settings: Settings, _args) -> int:
    from services.auth.app import build, start
    from services.common.server import serve_until_signalled

    if not settings.api_key or not settings.ops_api_key:
        raise SystemExit("API_KEY and OPS_API_KEY must be set (environment or secrets folder): "
                         "no default key ever works")
    app = build(settings)
    host = start(app)
    serve_until_signalled(host, app.settings, on_stop=app.close)
    return 0


def _read_password(settings: Settings, args) -> str:
    if args.password_file:
        return pathlib.Path(args.password_file).read_text().strip()
    if settings.admin_password:
        return settings.admin_password
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise SystemExit("passwords differ")
        return first
    raise SystemExit("no password: use --password-file FILE, ADMIN_PASSWORD, or run on a terminal to be prompted")


def _create_admin(settings: Settings, args) -> int:
    from services.auth.app import build

    username = args.username or settings.admin_username
    app = build(settings, bootstrap=False)
    try:
        user = app.accounts.create_admin(username, _read_password(settings, args))
    finally:
        app.close()
    print(json.dumps({"created": user.username, "role": user.role, "approved": user.approved}))
    return 0


def _write_secret(path: pathlib.Path, text: str) -> None:
    """Created 0600 from the first byte (no window where another user could read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _create_service_token(settings: Settings, args) -> int:
    from services.auth.app import build

    app = build(settings, bootstrap=False)
    try:
        token = app.accounts.mint_service_token(args.name, args.ttl_seconds, args.role)
    finally:
        app.close()
    expires = datetime.datetime.fromtimestamp(token.expires_at, datetime.timezone.utc).isoformat()
    if args.output:
        _write_secret(pathlib.Path(args.output), token.token)
        print(json.dumps({"name": args.name, "role": token.role, "jti": token.jti, "kid": token.kid,
                          "expires_at": expires, "written_to": str(args.output)}))
    else:
        print(token.token)
        print(json.dumps({"name": args.name, "jti": token.jti, "expires_at": expires}), file=sys.stderr)
    return 0


def _revoke_service_token(settings: Settings, args) -> int:
    from services.auth.app import build

    app = build(settings, bootstrap=False)
    try:
        count = app.accounts.revoke_service_tokens(args.name)
    finally:
        app.close()
    print(json.dumps({"name": args.name, "revoked": count}))
    return 0


def _rotate_keys(settings: Settings, _args) -> int:
    from services.auth.app import build

    app = build(settings, bootstrap=False)
    try:
        status = app.accounts.rotate_keys()
    finally:
        app.close()
    signs_from = datetime.datetime.fromtimestamp(status.next_signs_from, datetime.timezone.utc).isoformat()
    print(json.dumps({"signing_kid": status.signing_kid, "next_kid": status.next_kid,
                      "next_signs_from": signs_from, "published_kids": status.published_kids}))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m services.auth", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC service (default)").set_defaults(run=_serve)
    admin = commands.add_parser("create-admin", help="create an approved admin")
    admin.add_argument("--username", help="default: $ADMIN_USERNAME")
    admin.add_argument("--password-file", help="file holding the password (else $ADMIN_PASSWORD, else a prompt)")
    admin.set_defaults(run=_create_admin)
    mint = commands.add_parser("create-service-token", help="mint a long-lived service principal's token")
    mint.add_argument("--name", required=True, help="service principal, e.g. inference-outbox")
    mint.add_argument("--role", choices=SERVICE_ROLES, default="service",
                      help="service (default: outbox, internal callers) or reloader (ReloadModel only: monitoring)")
    mint.add_argument("--ttl-seconds", type=int, default=None, help="default: $SERVICE_TOKEN_TTL_SECONDS")
    mint.add_argument("--output", help="write the token to this file (mode 0600) instead of stdout")
    mint.set_defaults(run=_create_service_token)
    revoke = commands.add_parser("revoke-service-token", help="revoke every token minted for a service name")
    revoke.add_argument("--name", required=True)
    revoke.set_defaults(run=_revoke_service_token)
    commands.add_parser("rotate-keys", help="publish the next signing key").set_defaults(run=_rotate_keys)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    logs.configure("churn.auth", settings.log_level)
    run = getattr(args, "run", _serve)
    try:
        return run(settings, args)
    except DomainError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
