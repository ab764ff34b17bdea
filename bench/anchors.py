"""The anchors `make bench` measures the suite against, each a real server on loopback around the same registered
version: `mlflow models serve` (its pyfunc: raw Telco columns), a BentoML service (pre-encoded rows, its own
virtualenv), a minimal Python gRPC server with the booster, and one with no model (the ceiling)."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.e2e.envoy_process import free_port
from tests.harness import wait_serving

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
BENTO_VENV = ROOT / "var" / "bench-bentoml"
ANCHOR_NAMES = {"grpc_model": "minimal gRPC + model", "grpc_nomodel": "minimal gRPC, no model"}


@dataclasses.dataclass
class Anchor:
    name: str
    process: subprocess.Popen
    port: int
    start_seconds: float
    metrics_port: int = 0  # the gRPC anchors count OK answers like the suite does

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # uvicorn/bentoml workers are in the same group
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _spawn(command: list[str], log: pathlib.Path, env: dict[str, str], cwd: pathlib.Path = ROOT) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_http(url: str, process: subprocess.Popen, log: pathlib.Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


def start_mlflow(workdir: pathlib.Path, env: dict[str, str], model_uri: str) -> Anchor:
    """`mlflow models serve --env-manager local` (1 uvicorn worker, its default) of the registered version."""
    port = free_port()
    log = workdir / "mlflow_serve.log"
    bin_dir = str(pathlib.Path(sys.executable).parent)
    env = dict(env, PATH=bin_dir + os.pathsep + env.get("PATH", ""))
    began = time.monotonic()
    process = _spawn([os.path.join(bin_dir, "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
                      "-h", "127.0.0.1", "-p", str(port)], log, env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/ping", process, log, 180)
    except BaseException:
        Anchor("mlflow", process, port, 0).stop()
        raise
    return Anchor("mlflow models serve", process, port, time.monotonic() - began)


def bento_available() -> str:
    """'' when the BentoML virtualenv is installed (make bench-deps), else why not."""
    if not (BENTO_VENV / "bin" / "bentoml").exists():
        return f"BentoML is not installed in {BENTO_VENV.relative_to(ROOT)} (run `make bench-deps`)"
    return ""


def start_bento(workdir: pathlib.Path, model_json: pathlib.Path) -> Anchor:
    port = free_port()
    log = workdir / "bentoml.log"
    env = {"PATH": f"{BENTO_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(workdir),
           "BENTOML_HOME": str(workdir / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
           "BENCH_MODEL_JSON": str(model_json), "PYTHONUNBUFFERED": "1"}
    began = time.monotonic()
    process = _spawn([str(BENTO_VENV / "bin" / "bentoml"), "serve", "bento_service:ChurnBento",
                      "--host", "127.0.0.1", "--port", str(port)], log, env, cwd=BENCH)
    try:
        _wait_http(f"http://127.0.0.1:{port}/readyz", process, log, 180)
    except BaseException:
        Anchor("bentoml", process, port, 0).stop()
        raise
    return Anchor("BentoML", process, port, time.monotonic() - began)


def start_grpc_anchor(workdir: pathlib.Path, env: dict[str, str], model_json: pathlib.Path | None) -> Anchor:
    slug = "grpc_model" if model_json else "grpc_nomodel"
    name = ANCHOR_NAMES[slug]
    port_file, log = workdir / f"{slug}.port", workdir / f"{slug}.log"
    port_file.unlink(missing_ok=True)
    began = time.monotonic()
    command = [sys.executable, str(BENCH / "grpc_anchor.py"), "--port-file", str(port_file)]
    process = _spawn(command + (["--model-json", str(model_json)] if model_json else []), log, env)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            Anchor(name, process, 0, 0).stop()
            raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    ports = json.loads(port_file.read_text())
    wait_serving(f"127.0.0.1:{ports['grpc']}", 30, process=process)
    return Anchor(name, process, ports["grpc"], time.monotonic() - began, metrics_port=ports["http"])
