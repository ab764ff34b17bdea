"""supervisord under a deep DATA_DIR: a Unix socket path is limited to ~108 bytes, and supervisord refused to start
("AF_UNIX path too long") when `make run`'s data folder was deep (pytest-xdist's temp folders were enough). The control
socket then moves to a private folder under the temp dir, and supervisord really starts and answers there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tools.run_suite import UNIX_PATH_MAX, control_socket, process_states, supervisor_config


def test_a_short_folder_keeps_its_socket(tmp_path):
    folder = tmp_path / "s"
    assert control_socket(folder) == folder.resolve() / "supervisor.sock"


def test_supervisord_starts_and_answers_under_a_deep_folder(tmp_path):
    folder = tmp_path.joinpath(*["a-rather-long-folder-name"] * 6) / "supervisor"
    assert len(os.fsencode(folder / "supervisor.sock")) > UNIX_PATH_MAX
    config = supervisor_config(folder, {"sleeper": "sleep 60"}, tmp_path / "ports", stop_wait=5)
    socket = control_socket(folder)
    assert len(os.fsencode(socket)) <= UNIX_PATH_MAX and socket.parent.stat().st_mode & 0o777 == 0o700
    assert control_socket(folder) == socket  # the same folder always finds the same socket
    daemon = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while process_states(config).get("sleeper") != "RUNNING":
            assert daemon.poll() is None, daemon.stdout.read()
            assert time.monotonic() < deadline, "supervisord never reported its program RUNNING"
            time.sleep(0.2)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
