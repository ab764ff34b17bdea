"""`make run`: the whole suite behind Envoy, kept running by supervisord (PyPI `supervisor`) from the Procfile,
until Ctrl-C.

Renders and validates the Envoy config first (a bad config fails before anything starts), writes a supervisord
config from the Procfile (`DATA_DIR/supervisor/`), starts supervisord, waits until every service answers
grpc.health SERVING and Envoy's /clusters shows every upstream healthy, then prints the URLs. A process that dies
is restarted at once and logged (a crashed canary never takes production down: Envoy's fallback serves meanwhile);
one that keeps dying while starting is retried with a growing delay (1 s, 2 s, 3 s, … `START_RETRIES` times) and
then left FATAL. Ctrl-C (or SIGTERM) stops supervisord, which stops every process with SIGTERM and waits up to
`stop_wait_seconds(settings)` for it to drain.

Any port may be 0 (the tests run it so): each process writes the ports it bound to PORTS_DIR (default
`DATA_DIR/ports`, emptied at each start), a process waits there for the peers it connects to at start, `gateway run`
renders Envoy's config with the real upstream ports, and this runner reads Envoy's listener from its admin
`/listeners`, writes it to PORTS_DIR/gateway.json and prints the real ports. A process supervisord restarts binds
the ports its first start reported, so Envoy's config and every peer stay right.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from gateway import render
from gateway.__main__ import BACKENDS, GATEWAY, default_config, is_live, validate
from services.common.health import cluster_health
from services.common.server import write_port_file
from services.common.settings import ROOT, Settings

READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT_SECONDS", "240"))
START_SECONDS = 3  # up this long = started; an earlier exit counts as a failed start (backoff)
START_RETRIES = 10
BANNER_PROMPT = "$ "  # marks the banner's commands (tests run them as printed)
UNIX_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS; keep clear of both


def control_socket(folder: pathlib.Path) -> pathlib.Path:
    """supervisord's control socket: in its folder, unless that path is too long for a Unix socket (a deep
    DATA_DIR: supervisord would refuse to start) — then in a private folder under the temp dir named after it."""
    socket = folder.resolve() / "supervisor.sock"
    if len(os.fsencode(socket)) <= UNIX_PATH_MAX:
        return socket
    digest = hashlib.sha256(os.fsencode(socket)).hexdigest()[:16]
    short = pathlib.Path(tempfile.gettempdir()) / f"churn-supervisor-{digest}"
    short.mkdir(mode=0o700, exist_ok=True)
    if short.stat().st_uid != os.geteuid() or short.stat().st_mode & 0o077:
        raise SystemExit(f"run_suite: {short} exists and is not this user's private folder")
    return short / "supervisor.sock"


def stop_wait_seconds(settings: Settings) -> int:
    """How long a service may take after SIGTERM: NOT_SERVING until Envoy saw it, the grace for in-flight calls,
    and 5 s to close its stores."""
    return int(settings.shutdown_drain_seconds + settings.shutdown_grace_seconds) + 5


def procfile(path: pathlib.Path = ROOT / "Procfile") -> dict[str, str]:
    """name -> command of every `name: command` line (comments and blank lines skipped)."""
    processes = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if sep and name.strip() and not name.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def supervisor_config(folder: pathlib.Path, processes: dict[str, str], ports_dir: pathlib.Path,
                      stop_wait: int) -> pathlib.Path:
    """supervisord.conf: in the foreground, its own log and every child's output on stdout, a private control
    socket, and per process: restart always, start backoff, SIGTERM with time to drain, its port file."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = control_socket(folder)
    lines = ["[supervisord]", "nodaemon=true", "logfile=/dev/stdout", "logfile_maxbytes=0", "loglevel=info",
             f"pidfile={folder / 'supervisord.pid'}", f"childlogdir={folder}", "",
             "[unix_http_server]", f"file={socket}", "chmod=0700", "",
             "[rpcinterface:supervisor]",
             "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
             "[supervisorctl]", f"serverurl=unix://{socket}", ""]
    for name, command in processes.items():
        lines += [f"[program:{name}]", f"command={command}", f"directory={ROOT}", "autostart=true",
                  f'environment=PORT_FILE="{ports_dir / name}.json"',
                  "autorestart=true", f"startsecs={START_SECONDS}", f"startretries={START_RETRIES}",
                  "stopsignal=TERM", f"stopwaitsecs={stop_wait}", "stopasgroup=true", "killasgroup=true",
                  "redirect_stderr=true", "stdout_logfile=/dev/stdout", "stdout_logfile_maxbytes=0", ""]
    path = folder / "supervisord.conf"
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


def process_states(config: pathlib.Path) -> dict[str, str]:
    """name -> supervisor state (RUNNING, STARTING, BACKOFF, FATAL, …) from `supervisorctl status`; nothing
    while supervisorctl does not answer within 10 s (a loaded machine: asked again a second later)."""
    try:
        done = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c", str(config), "status"],
                              capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return {}
    return dict(line.split()[:2] for line in done.stdout.splitlines() if len(line.split()) >= 2)


def grpc_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def envoy_unhealthy(admin: str) -> list[str] | None:
    """Clusters Envoy does not consider healthy (None while the admin endpoint is not up)."""
    try:
        with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=2) as response:
            clusters = json.loads(response.read())
    except OSError:
        return None
    return [name for name, healthy in cluster_health(clusters).items() if not healthy]


def bound(settings: Settings) -> Settings | None:
    """Settings with every backend's real ports, or None while one has not reported them yet."""
    try:
        return dataclasses.replace(settings, peer_wait_seconds=0).with_bound_ports(*BACKENDS)
    except TimeoutError:
        return None


def envoy_ports(admin: str) -> tuple[int, int] | None:
    """(gateway listener, admin) ports as Envoy bound them, from its admin `/listeners` (None while it is not up)."""
    try:
        with urllib.request.urlopen(f"{admin}/listeners?format=json", timeout=2) as response:
            listeners = json.loads(response.read())["listener_statuses"]
    except (OSError, ValueError, KeyError):
        return None
    port = next((item["local_address"]["socket_address"]["port_value"] for item in listeners
                 if item.get("name") == "gateway"), 0)
    return (port, int(admin.rsplit(":", 1)[1])) if port else None


def wait_ready(settings: Settings, supervisord: subprocess.Popen, config: pathlib.Path) -> Settings:
    """Waits until every service is SERVING and Envoy is LIVE and sees every upstream healthy; returns the Settings
    with the ports everything really bound (and writes Envoy's to PORTS_DIR, where a restarted Envoy finds them)."""
    deadline = time.monotonic() + READY_TIMEOUT
    waiting: list[str] = []
    while time.monotonic() < deadline:
        if supervisord.poll() is not None:
            raise SystemExit(f"supervisord exited before the suite was ready (exit {supervisord.returncode})")
        fatal = [name for name, state in process_states(config).items() if state == "FATAL"]
        if fatal:
            raise SystemExit(f"gave up starting {', '.join(fatal)} (see the log above)")
        waiting = ["ports"]
        real = bound(settings)
        if real is not None:
            services = {"auth": real.auth_address, "monitoring": real.monitoring_address,
                        "inference production": real.inference_address("production"),
                        "inference staging": real.inference_address("staging")}
            waiting = [name for name, address in services.items() if not grpc_serving(address)]
            admin = real.envoy_admin_url()
            unhealthy = envoy_unhealthy(admin)
            ports = envoy_ports(admin)
            if unhealthy is None or ports is None or not is_live(admin):
                waiting.append("envoy")
            else:
                waiting += [f"envoy→{name}" for name in unhealthy]
            if not waiting:
                real = dataclasses.replace(real, gateway_port=ports[0], envoy_admin_port=ports[1])
                write_port_file(str(real.peer_port_file(GATEWAY)), ports[0], None, admin=ports[1])
                return real
        time.sleep(1)
    raise TimeoutError(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(waiting)}")


def banner_commands(settings: Settings) -> list[str]:
    """Commands to paste into a shell as printed: every argument shell-quoted, and the `$(cat …)` that reads the
    API key inside double quotes (single quotes would send the text `$(cat …)` as the key)."""
    gateway = f"{settings.bind_host}:{settings.gateway_port}"
    grpcurl = pathlib.Path(sys.executable).parent / "grpcurl"  # installed into the virtualenv by `make`
    api_key = shlex.quote(str(settings.secrets_dir / "api_key"))
    return [f"curl -s http://{gateway}/healthz",
            f'{shlex.quote(str(grpcurl))} -plaintext -H "x-api-key: $(cat {api_key})" {gateway} list']


def banner(settings: Settings) -> str:
    return "\n".join([
        "",
        "churn suite is up (Ctrl-C stops everything)",
        f"  gateway (gRPC h2c + REST)  http://{settings.bind_host}:{settings.gateway_port}",
        f"  Envoy admin (loopback)     http://127.0.0.1:{settings.envoy_admin_port}",
        f"  auth                       grpc {settings.auth_address}  metrics+JWKS http://{settings.auth_host}:"
        f"{settings.auth_http_port}/.well-known/jwks.json",
        f"  inference production       grpc {settings.inference_address('production')}"
        f"  metrics :{settings.inference_http_port('production')}",
        f"  inference staging          grpc {settings.inference_address('staging')}"
        f"  metrics :{settings.inference_http_port('staging')}",
        f"  monitoring                 grpc {settings.monitoring_address}  metrics :{settings.monitoring_http_port}",
        f"  secrets                    {settings.secrets_dir} (api_key, ops_api_key, admin_password, service_token,"
        " monitoring_token)",
        "try (copy and paste):",
        *(f"  {BANNER_PROMPT}{command}" for command in banner_commands(settings)),
        "",
    ])


def load_dotenv(path: pathlib.Path = ROOT / ".env") -> None:
    """`.env` into this process's environment (the real environment wins); supervisord and every process it
    starts inherit it, so render, readiness and the services see the same settings."""
    if path.exists():
        from dotenv import dotenv_values

        for key, value in dotenv_values(path).items():
            if value is not None:
                os.environ.setdefault(key, value)


def fresh_ports_dir() -> pathlib.Path:
    """PORTS_DIR (default DATA_DIR/ports), emptied: each `make run` starts on the ports it is configured with."""
    os.environ.setdefault("PORTS_DIR", str(Settings.from_env().data_dir / "ports"))
    folder = pathlib.Path(os.environ["PORTS_DIR"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700, parents=True)
    return folder


def stand_in_ports(settings: Settings) -> Settings:
    """For the check before anything starts: a backend on port 0 has not bound yet, so port 1 stands in for it
    (`gateway run` renders the real ports later; the check is of everything else)."""
    names = ("auth_port", "auth_http_port", "monitoring_port", "monitoring_http_port", "inference_production_port",
             "inference_staging_port")
    stand_in = dataclasses.replace(settings, **{name: getattr(settings, name) or 1 for name in names})
    return dataclasses.replace(stand_in, jwks_url=settings.jwks_url.replace(
        f":{settings.auth_http_port}/", f":{stand_in.auth_http_port}/", 1))


def main() -> int:
    load_dotenv()
    ports_dir = fresh_ports_dir()
    settings = Settings.from_env()
    config = render.prepare(stand_in_ports(settings), default_config(settings))
    checked = validate(config)
    if checked.returncode != 0:
        print(checked.stdout + checked.stderr, file=sys.stderr)
        return 1
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    conf = supervisor_config(settings.data_dir / "supervisor", procfile(), ports_dir, stop_wait_seconds(settings))
    supervisord = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)], cwd=ROOT,
                                   env=env)

    def stop(*_):
        supervisord.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        print(banner(wait_ready(settings, supervisord, conf)), flush=True)
        # supervisord exits 0 only when told to stop (Ctrl-C, SIGTERM, `supervisorctl shutdown`): on a loaded
        # machine it may be gone before this process has handled the same Ctrl-C, which is still a clean stop
        code = supervisord.wait()
        return code if code >= 0 else 1
    except KeyboardInterrupt:  # Ctrl-C: the terminal signalled supervisord too, which stops its children
        try:
            code = supervisord.wait(timeout=2)
        except subprocess.TimeoutExpired:
            stop()  # the SIGINT reached only this process (kill -INT <pid>): pass it on
        code = supervisord.wait()
        return code
    except (TimeoutError, SystemExit) as error:
        print(f"run_suite: {error}", file=sys.stderr)
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)
        supervisord.wait()
        return 1


if __name__ == "__main__":
    sys.exit(main())
