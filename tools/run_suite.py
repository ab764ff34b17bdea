"""`make run`: the whole suite behind Envoy, run by honcho from the Procfile, until Ctrl-C.

Renders and validates the Envoy config first (a bad config fails before anything starts), starts honcho, waits
until every service answers grpc.health SERVING and Envoy's /clusters shows every upstream healthy, then prints the
URLs. Ctrl-C (or SIGTERM) stops honcho, which stops every child; if any child dies, honcho stops the rest.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.request

from gateway import render
from gateway.__main__ import default_config, validate
from services.common.settings import ROOT, Settings

READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT_SECONDS", "240"))


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
    """Hosts Envoy does not consider healthy (None while the admin endpoint is not up)."""
    try:
        with urllib.request.urlopen(f"{admin}/clusters?format=json", timeout=2) as response:
            clusters = json.loads(response.read())
    except OSError:
        return None
    bad = []
    for cluster in clusters.get("cluster_statuses", []):
        for host in cluster.get("host_statuses", []):
            statuses = host.get("health_status", {})
            if statuses.get("eds_health_status") not in (None, "HEALTHY") or any(
                    value is True for key, value in statuses.items() if key.startswith("failed")):
                bad.append(cluster["name"])
    return bad


def wait_ready(settings: Settings, honcho: subprocess.Popen) -> None:
    services = {
        "auth": f"{settings.auth_host}:{settings.auth_port}",
        "monitoring": f"{settings.monitoring_host}:{settings.monitoring_port}",
        "inference production": f"{settings.inference_host('production')}:{settings.inference_port('production')}",
        "inference staging": f"{settings.inference_host('staging')}:{settings.inference_port('staging')}",
    }
    admin = f"http://127.0.0.1:{settings.envoy_admin_port}"
    deadline = time.monotonic() + READY_TIMEOUT
    waiting: list[str] = []
    while time.monotonic() < deadline:
        if honcho.poll() is not None:
            raise SystemExit(f"a process exited before the suite was ready (honcho exit {honcho.returncode})")
        waiting = [name for name, address in services.items() if not grpc_serving(address)]
        unhealthy = envoy_unhealthy(admin)
        if unhealthy is None:
            waiting.append("envoy")
        else:
            waiting += [f"envoy→{name}" for name in unhealthy]
        if not waiting:
            return
        time.sleep(1)
    raise TimeoutError(f"not ready after {READY_TIMEOUT:.0f}s: {', '.join(waiting)}")


def banner(settings: Settings) -> str:
    gateway = f"http://{settings.bind_host}:{settings.gateway_port}"
    return "\n".join([
        "",
        "churn suite is up (Ctrl-C stops everything)",
        f"  gateway (gRPC h2c + REST)  {gateway}    e.g. curl {gateway}/healthz",
        f"  grpcurl                    grpcurl -plaintext -H 'x-api-key: $(cat {settings.secrets_dir}/api_key)' "
        f"{settings.bind_host}:{settings.gateway_port} list",
        f"  Envoy admin (loopback)     http://127.0.0.1:{settings.envoy_admin_port}",
        f"  auth                       grpc {settings.auth_address}  metrics+JWKS http://{settings.auth_host}:"
        f"{settings.auth_http_port}/.well-known/jwks.json",
        f"  inference production       grpc {settings.inference_host('production')}:"
        f"{settings.inference_port('production')}  metrics :{settings.inference_http_port('production')}",
        f"  inference staging          grpc {settings.inference_host('staging')}:{settings.inference_port('staging')}"
        f"  metrics :{settings.inference_http_port('staging')}",
        f"  monitoring                 grpc {settings.monitoring_address}  metrics :{settings.monitoring_http_port}",
        f"  secrets                    {settings.secrets_dir} (api_key, ops_api_key, admin_password, service_token)",
        "",
    ])


def load_dotenv(path: pathlib.Path = ROOT / ".env") -> None:
    """`.env` as honcho reads it for the Procfile, so this process (render, readiness) sees the same settings;
    the real environment wins."""
    if path.exists():
        from honcho.environ import parse

        for key, value in parse(path.read_text()).items():
            os.environ.setdefault(key, value)


def main() -> int:
    load_dotenv()
    settings = Settings.from_env()
    config = render.prepare(settings, default_config(settings))
    checked = validate(config)
    if checked.returncode != 0:
        print(checked.stdout + checked.stderr, file=sys.stderr)
        return 1
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "gen"), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    honcho = subprocess.Popen([sys.executable, "-m", "honcho", "-d", str(ROOT), "-f", str(ROOT / "Procfile"),
                               "start"], cwd=ROOT, env=env)
    stopping = []

    def stop(*_):
        stopping.append(True)
        honcho.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        wait_ready(settings, honcho)
        print(banner(settings), flush=True)
        code = honcho.wait()
        # honcho exits 143 after a requested stop; anything else means a process died on its own
        return 0 if stopping and code in (0, 130, 143) else code
    except KeyboardInterrupt:  # Ctrl-C: the terminal signalled honcho too, which stops its children
        try:
            code = honcho.wait(timeout=2)
        except subprocess.TimeoutExpired:  # the SIGINT reached only this process (kill -INT <pid>): pass it on
            stop()
            code = honcho.wait()
        return 0 if code in (0, 130, 143) else code
    except (TimeoutError, SystemExit) as error:
        print(f"run_suite: {error}", file=sys.stderr)
        if honcho.poll() is None:
            honcho.send_signal(signal.SIGTERM)
        honcho.wait()
        return 1


if __name__ == "__main__":
    sys.exit(main())
