"""The suite on loopback for the benchmark, started with the tests' own helpers (tests/harness.py, the real Envoy of
tests/e2e/envoy_process.py): auth → monitoring → inference production and staging → Envoy, each on port 0 with its
own DATA_DIR and keys, started one after another so each start-to-SERVING time is its own (or, where start times
are not measured, the services all at once as `make run` starts them).

The registry is read from `registry_dir` (a DATA_DIR trained once and kept between runs); everything a run writes
(users, outbox, prediction log, compiled trees) lives in the run's own folder."""
from __future__ import annotations

import dataclasses
import os
import pathlib
import secrets
import time
from concurrent import futures

import grpc

from churn.v1 import auth_pb2, auth_pb2_grpc
from services.common import mlflow_config
from services.common.settings import Settings
from tests.e2e.envoy_process import EnvoyProcess, free_port
from tests.harness import ServiceProcess, base_env, run_module

CHEAP_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024"}
UNLIMITED = {"AUTH_RATE_PER_MINUTE": "1000000", "PREDICT_RATE_PER_MINUTE": "100000000",
             "SERVICE_PREDICT_RATE_PER_MINUTE": "100000000"}


def ensure_registry(registry_dir: pathlib.Path) -> str:
    """Train and register the models under `registry_dir` unless a `production` version is already there;
    returns the registry's tracking URI."""
    env = base_env(registry_dir.resolve())
    run_module("training", env, "--if-missing", timeout=900)
    return mlflow_config.tracking_uri(Settings.from_env(env))


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            found.setdefault(ppid, []).append(int(entry.name))
    return found


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    """A process and all its descendants (workers, uvicorn children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def rss_bytes(pids: dict[str, int]) -> dict[str, int]:
    """Resident memory of each named process with its descendants, from /proc."""
    children, out = _children(), {}
    for name, pid in pids.items():
        out[name] = 0
        for member in _tree(pid, children):
            try:
                for line in pathlib.Path(f"/proc/{member}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out[name] += int(line.split()[1]) * 1024
            except OSError:
                pass
    return out


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds used so far by each named process with its descendants."""
    children, out = _children(), {}
    for name, pid in pids.items():
        ticks = 0
        for member in _tree(pid, children):
            try:
                fields = pathlib.Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            except (OSError, IndexError, ValueError):
                pass
        out[name] = ticks / os.sysconf("SC_CLK_TCK")
    return out


@dataclasses.dataclass
class Stack:
    env: dict[str, str]
    settings: Settings
    workdir: pathlib.Path
    services: dict[str, ServiceProcess]
    gateway: EnvoyProcess | None
    service_token: str
    admin_password: str
    start_seconds: dict[str, float]

    def admin_token(self) -> str:
        """Explain is for admins: log the run's first admin in at auth, as a caller would."""
        with grpc.insecure_channel(self.services["auth"].address) as channel:
            reply = auth_pb2_grpc.AuthServiceStub(channel).Login(
                auth_pb2.LoginRequest(username="admin", password=self.admin_password),
                metadata=[("x-api-key", self.settings.api_key)], timeout=10)
        return reply.access_token

    def pids(self) -> dict[str, int]:
        found = {name: process.process.pid for name, process in self.services.items()}
        if self.gateway is not None:
            found["envoy"] = self.gateway.process.pid
        return found

    def inference_metric_ports(self) -> list[int]:
        return [self.services[alias].http_port for alias in ("production", "staging")]

    def stop(self) -> None:
        """Every process drains at once (one after another, their grace periods would add up)."""
        processes = [*([self.gateway] if self.gateway is not None else []), *self.services.values()]
        with futures.ThreadPoolExecutor(len(processes)) as pool:
            list(pool.map(lambda process: process.stop(), processes))


# (process name, module, arguments, extra environment, seconds to SERVING): in the order each needs the one before
SERVICES = (("auth", "services.auth", ("serve",), {}, 60), ("monitoring", "services.monitoring", (), {}, 180),
            *((f"inference_{alias}", "services.inference", (), {"MODEL_ALIAS": alias}, 300)
              for alias in ("production", "staging")))


def start_stack(workdir: pathlib.Path, tracking_uri: str, canary_percent: int = 10, parallel: bool = False,
                inference_workers: int | None = None, gateway: bool = True) -> Stack:
    """`parallel` starts auth, monitoring and both inference instances at once, each finding its peers' ports in
    PORTS_DIR as under `make run` (faster; their start times then share the CPU). `inference_workers` defaults to
    what `make run` uses: one worker process per core. `gateway=False` leaves Envoy out (for callers that run
    their own Envoys in front of the services)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = base_env(workdir)
    env.update(CHEAP_ARGON2, **UNLIMITED, MLFLOW_TRACKING_URI=tracking_uri, LOG_LEVEL="WARNING",
               ENVOY_ADMIN_PORT=str(free_port()), GATEWAY_PORT="0", CANARY_PERCENT=str(canary_percent),
               MAX_BATCH_ROWS="10000", INFERENCE_WORKERS=str(inference_workers or os.cpu_count() or 1),
               SHUTDOWN_DRAIN_SECONDS="0")  # a stack is stopped after its last call: no traffic left to drain
    env.pop("SESSION_CHECK_SECONDS")  # the tests' 1 s (they revoke sessions and wait): the product's default here
    if parallel:
        env["PORTS_DIR"] = str(workdir / "ports")
        (workdir / "ports").mkdir(exist_ok=True)
    secrets_dir = pathlib.Path(env["SECRETS_DIR"])
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token_file = secrets_dir / "service_token"
    password_file = secrets_dir / "admin_password"
    password_file.write_text("pw-" + secrets.token_urlsafe(16))
    run_module("services.auth", env, "create-admin", "--username", "admin", "--password-file", str(password_file))
    run_module("services.auth", env, "create-service-token", "--name", "bench", "--output", str(token_file))
    timings: dict[str, float] = {}
    started: dict[str, ServiceProcess] = {}
    envoy = None
    try:
        began = time.monotonic()
        for name, module, args, extra, timeout in SERVICES:
            started[name] = ServiceProcess(name, module, dict(env, **extra), workdir, args=args)
            if not parallel:  # the next one is given this one's ports
                _ready(started[name], timeout, env, timings, began)
                began = time.monotonic()
        for name, _, _, _, timeout in SERVICES if parallel else ():
            _ready(started[name], timeout, env, timings, began)
        settings = Settings.from_env(env)
        if gateway:
            began = time.monotonic()
            envoy = EnvoyProcess("envoy", settings, workdir).wait_ready()
            timings["envoy"] = time.monotonic() - began
    except BaseException:
        for process in started.values():
            process.stop()
        raise
    services = {name.removeprefix("inference_"): process for name, process in started.items()}
    return Stack(env, settings, workdir, services, envoy, token_file.read_text().strip(), password_file.read_text(),
                 {name.removeprefix("inference_"): seconds for name, seconds in timings.items()})


def _ready(process: ServiceProcess, timeout: float, env: dict[str, str], timings: dict[str, float],
           began: float) -> None:
    """Wait for SERVING; its start-to-SERVING seconds and its ports (for the next processes and Envoy) recorded."""
    process.wait_ready(timeout)
    timings[process.name] = time.monotonic() - began
    env[f"{process.name.upper()}_PORT"] = str(process.port)
    env[f"{process.name.upper()}_HTTP_PORT"] = str(process.http_port)


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine
