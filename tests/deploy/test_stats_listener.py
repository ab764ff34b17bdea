"""Envoy's admin stays on loopback; a scraper in another container reads /stats/prometheus from the stats listener,
which serves that one path and nothing of the admin's (runtime_modify, quitquitquit)."""
from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from gateway import extras, render
from services.common.settings import Settings
from tests.deploy.envoy_stats import StatsEnvoy, gateway_env


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    process = StatsEnvoy(gateway_env(tmp_path_factory.mktemp("stats")), tmp_path_factory.mktemp("envoy"))
    yield process
    process.stop()


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_admin_binds_loopback_and_the_stats_listener_is_off_by_default(tmp_path):
    env = gateway_env(tmp_path)
    del env["ENVOY_STATS_PORT"]
    config = render.render(Settings.from_env(env))
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert [item["name"] for item in config["static_resources"]["listeners"]] == ["gateway"]


def test_stats_listener_serves_prometheus_text(envoy):
    status, body = _get(f"http://127.0.0.1:{envoy.ports[extras.STATS_LISTENER]}{extras.STATS_PATH}")
    assert status == 200
    assert "# TYPE envoy_cluster_upstream_rq_total counter" in body
    assert 'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="ingress"}' \
        in body


@pytest.mark.parametrize("method,path", [("POST", "/runtime_modify?x=1"), ("POST", "/quitquitquit"),
                                         ("GET", "/runtime"), ("GET", "/config_dump"), ("POST", extras.STATS_PATH)])
def test_stats_listener_exposes_nothing_else_of_the_admin(envoy, method, path):
    status, _ = _get(f"http://127.0.0.1:{envoy.ports[extras.STATS_LISTENER]}{path}", method)
    assert status == 404
    assert envoy.process.poll() is None
