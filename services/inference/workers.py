"""More than one core per instance: N worker processes serve one gRPC port (SO_REUSEPORT), as in grpc's
`examples/python/multiprocessing` — Python threads alone keep one core busy at most.

The parent reserves the port, starts the workers (spawned: no gRPC state crosses a fork), restarts one that dies
(with backoff), serves `/metrics` for all of them (prometheus_client's multiprocess mode), writes the port file and
stops them all on SIGTERM. Each worker is a whole instance with its own outbox file and shipper.

A ReloadModel call reaches one worker: it reloads, asks the parent (SIGUSR1) to tell its siblings, and answers once
every worker reports the new version in its state file (or after `SYNC_TIMEOUT`), so a caller that reloads, then
predicts, never meets the old model.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pathlib
import shutil
import signal
import socket
import threading
import time

from services.common.logs import fields
from services.common.settings import Settings

log = logging.getLogger("churn.inference.workers")
SYNC_TIMEOUT = 60.0
RESTART_BACKOFF = (0.5, 30.0)


def metrics_dir(settings: Settings, alias: str) -> pathlib.Path:
    return settings.data_dir / "metrics" / f"inference-{alias}"


def state_dir(settings: Settings, alias: str) -> pathlib.Path:
    return settings.data_dir / "workers" / f"inference-{alias}"


class WorkerGroup:
    """A worker's view of its siblings: who serves which version, and how to ask them to reload."""

    def __init__(self, folder: pathlib.Path, index: int, count: int):
        self._folder = folder
        self.index = index
        self.count = count

    def loaded(self, version: str) -> None:
        """Record the version this worker serves now (atomically: siblings read it while it changes)."""
        tmp = self._folder / f".w{self.index}.tmp"
        tmp.write_text(version)
        tmp.replace(self._folder / f"w{self.index}")

    def versions(self) -> list[str]:
        return [(self._folder / f"w{i}").read_text() if (self._folder / f"w{i}").exists() else ""
                for i in range(self.count)]

    def listening(self) -> None:
        """Mark this worker as accepting connections on the shared port (its model is loaded by then)."""
        (self._folder / f"listening-w{self.index}").touch()

    def all_listening(self) -> bool:
        return all((self._folder / f"listening-w{i}").exists() for i in range(self.count))

    def reload_siblings(self, version: str) -> bool:
        """Ask the parent to signal every worker, then wait until all serve `version`; False on timeout."""
        os.kill(os.getppid(), signal.SIGUSR1)
        deadline = time.monotonic() + SYNC_TIMEOUT
        while time.monotonic() < deadline:
            if all(v == version for v in self.versions()):
                return True
            time.sleep(0.05)
        log.warning("workers did not all reach the reloaded version", extra=fields(version=version,
                                                                                  versions=self.versions()))
        return False


def _run_worker(settings: Settings, index: int, count: int, port: int) -> None:
    """One worker process: a whole inference instance on the shared port, without a side port or port file."""
    import dataclasses

    from services.common import logs
    from services.common.auth_client import remote_verifier
    from services.common.server import serve_until_signalled
    from services.inference import app

    alias = settings.model_alias
    logs.configure(f"inference-{alias}-w{index}", settings.log_level)
    group = WorkerGroup(state_dir(settings, alias), index, count)
    settings = dataclasses.replace(settings, port_file="")  # the parent reports the ports
    parts = dataclasses.replace(app.build_parts(settings, alias), port=port, http_port=None,
                                outbox_file=app.outbox_path(settings, alias, worker=index), group=group)
    inference = app.start(settings, remote_verifier(settings), parts)
    group.listening()
    reload_wanted = threading.Event()

    def reload_when_asked() -> None:
        while True:
            reload_wanted.wait()
            reload_wanted.clear()
            try:
                inference.holder.reload()
            except Exception as exc:  # noqa: BLE001 - the registry may be down: keep serving what we have
                log.warning("sibling reload failed", extra=fields(error=str(exc)[:500]))

    threading.Thread(target=reload_when_asked, name="sibling-reload", daemon=True).start()
    signal.signal(signal.SIGUSR1, lambda *_: reload_wanted.set())
    serve_until_signalled(inference.host, settings, on_stop=inference.close)


def _wait_all_listening(group: WorkerGroup, workers: dict[int, multiprocessing.Process],
                     stopping: threading.Event) -> None:
    """The port file says "ready" to peers, Envoy's renderer and tests: write it once every worker listens (a pool
    worker loads its model first), not when the first one answers health — until then the kernel gives every
    connection to the workers already there. A worker that dies while starting ends the wait: the supervision loop
    restarts it."""
    while not stopping.is_set() and not group.all_listening():
        if any(not process.is_alive() for process in workers.values()):
            return
        time.sleep(0.05)


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (not listen) with SO_REUSEPORT so the port stays ours while workers bind it too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def serve(settings: Settings, count: int) -> int:
    """The parent: run `count` workers on one port until SIGTERM/SIGINT; 0 after a requested stop."""
    from prometheus_client import CollectorRegistry, multiprocess

    from services.common.metrics import SideHttpServer
    from services.common.server import write_port_file

    alias = settings.model_alias
    folder = state_dir(settings, alias)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    reserved = _reserve_port(settings.bind_host, settings.inference_port(alias))
    port = reserved.getsockname()[1]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    http = SideHttpServer(settings.bind_host, settings.inference_http_port(alias), registry=registry).start()
    context = multiprocessing.get_context("spawn")
    workers: dict[int, multiprocessing.Process] = {}
    started_at: dict[int, float] = {}
    stopping = threading.Event()

    def start(index: int) -> None:
        process = context.Process(target=_run_worker, args=(settings, index, count, port), name=f"worker-{index}")
        process.start()
        workers[index], started_at[index] = process, time.monotonic()

    def forward(signum: int) -> None:
        for process in list(workers.values()):
            if process.pid and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGUSR1, lambda *_: forward(signal.SIGUSR1))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    for index in range(count):
        start(index)
    _wait_all_listening(WorkerGroup(folder, index=-1, count=count), workers, stopping)  # the parent: no index
    write_port_file(settings.port_file, port, http.port)
    log.info("workers started", extra=fields(workers=count, grpc_port=port, http_port=http.port))
    backoff = {index: RESTART_BACKOFF[0] for index in range(count)}
    while not stopping.is_set():
        sentinels = {process.sentinel: index for index, process in workers.items()}
        for ready in multiprocessing.connection.wait(list(sentinels), timeout=0.5):
            index = sentinels[ready]
            dead = workers[index]
            multiprocess.mark_process_dead(dead.pid)
            if stopping.is_set():
                break
            if time.monotonic() - started_at[index] > 60:  # it had been healthy: start the backoff afresh
                backoff[index] = RESTART_BACKOFF[0]
            log.error("worker died; restarting", extra=fields(worker=index, exitcode=dead.exitcode,
                                                              retry_seconds=backoff[index]))
            stopping.wait(backoff[index])
            backoff[index] = min(backoff[index] * 2, RESTART_BACKOFF[1])
            if not stopping.is_set():
                start(index)
    forward(signal.SIGTERM)
    for process in workers.values():
        process.join(15)
        if process.is_alive():
            process.kill()
    http.stop()
    reserved.close()
    return 0
