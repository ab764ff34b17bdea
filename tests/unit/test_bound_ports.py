"""`make run` on port 0: processes report their bound ports in PORTS_DIR, find their peers there, and a restarted
process binds the ports its first start reported (tools/run_suite.py; the whole run: tests/e2e/test_make_run.py)."""
import json
import threading
import time

import pytest

from services.common.interceptor import ServiceInterceptor
from services.common.server import start_server, write_port_file
from services.common.settings import ENVOY_ADMIN_FILE, Settings
from tests.tokens import LocalKeys

ZERO = {name: "0" for name in ("AUTH_PORT", "AUTH_HTTP_PORT", "MONITORING_PORT", "MONITORING_HTTP_PORT",
                               "INFERENCE_PRODUCTION_PORT", "INFERENCE_PRODUCTION_HTTP_PORT",
                               "INFERENCE_STAGING_PORT", "INFERENCE_STAGING_HTTP_PORT", "ENVOY_ADMIN_PORT")}


def settings_in(tmp_path, **env) -> Settings:
    return Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "PORTS_DIR": str(tmp_path / "ports"), **ZERO,
                              **env})


def test_a_peer_is_waited_for_and_its_reported_ports_filled_in(tmp_path):
    settings = settings_in(tmp_path, MONITORING_PORT="50099")
    (tmp_path / "ports").mkdir()
    later = threading.Timer(0.3, write_port_file, (str(tmp_path / "ports" / "auth.json"), 41001, 41002))
    later.start()
    bound = settings.with_bound_ports("auth", "monitoring")
    later.join()
    assert (bound.auth_port, bound.auth_http_port, bound.auth_address) == (41001, 41002, "127.0.0.1:41001")
    assert bound.jwks_url == "http://127.0.0.1:41002/.well-known/jwks.json"  # the default URL follows the port
    assert bound.monitoring_port == 50099  # a configured port is never looked up


def test_no_ports_dir_changes_nothing_and_a_missing_peer_times_out_by_name(tmp_path):
    plain = Settings.from_env({"DATA_DIR": str(tmp_path), **ZERO})
    assert plain.ports_dir is None and plain.with_bound_ports("auth") is plain
    waiting = settings_in(tmp_path, PEER_WAIT_SECONDS="0.2")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="monitoring reported no ports"):
        waiting.with_bound_ports("monitoring")
    assert time.monotonic() - started < 10


def test_instances_and_envoy_admin_are_looked_up_when_called(tmp_path):
    settings = settings_in(tmp_path)
    ports = tmp_path / "ports"
    ports.mkdir()
    assert settings.inference_port("staging") == 0 and settings.envoy_admin_url() == "http://127.0.0.1:0"
    write_port_file(str(ports / "inference_staging.json"), 42001, 42002)
    (ports / ENVOY_ADMIN_FILE).write_text("127.0.0.1:42009\n")
    assert settings.inference_address("staging") == "127.0.0.1:42001"
    assert settings.inference_http_port("staging") == 42002 and settings.inference_port("production") == 0
    assert settings.envoy_admin_url() == "http://127.0.0.1:42009"
    assert settings_in(tmp_path, ENVOY_ADMIN_PORT="9911").envoy_admin_url() == "http://127.0.0.1:9911"


def start(settings: Settings):
    return start_server(settings, port=0, http_port=0, register=lambda server: None, service_names=[],
                        interceptor=ServiceInterceptor(LocalKeys().verifier(), "k", "o"))


def test_a_restarted_process_binds_the_ports_its_first_start_reported(tmp_path):
    (tmp_path / "ports").mkdir()
    port_file = tmp_path / "ports" / "auth.json"
    settings = settings_in(tmp_path, PORT_FILE=str(port_file))
    first = start(settings)
    ports = (first.port, first.http_port)
    first.stop(0)
    assert json.loads(port_file.read_text()) == {"grpc": ports[0], "http": ports[1]}
    again = start(settings)  # as supervisord restarts it: same environment, its port file still there
    try:
        assert (again.port, again.http_port) == ports
    finally:
        again.stop(0)


def test_outside_make_run_a_port_file_is_only_written(tmp_path):
    port_file = tmp_path / "p.json"
    write_port_file(str(port_file), 1, 2)  # a stale file from an earlier process
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "PORT_FILE": str(port_file)})
    host = start(settings)
    try:
        assert host.port not in (0, 1) and json.loads(port_file.read_text())["grpc"] == host.port
    finally:
        host.stop(0)
