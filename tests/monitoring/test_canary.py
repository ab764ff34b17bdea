"""The canary weight against a REAL Envoy: a minimal config of our own with the three runtime layers from
`canary_runtime` (static default, the disk layer under the test's data folder, the admin layer) and a
weighted_clusters route with the same runtime_key_prefix. SetCanaryWeight(30) → Envoy's GET /runtime says 30 →
Envoy restarts (same admin port, as a deployment's fixed port) → still 30; a hand edit is reconciled back."""
from __future__ import annotations

import json
import pathlib
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
from churn.v1 import monitoring_pb2

from gateway.__main__ import envoy_binary
from services.common import canary_runtime as CR
from tests.harness import terminate
from tests.monitoring.conftest import start_monitoring

DEFAULT_PERCENT = 10


def envoy_config(data_dir: pathlib.Path, admin_port: int) -> dict:
    clusters = [{"name": name, "type": "STATIC", "connect_timeout": "1s",
                 "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {
                     "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}}
                for name in (CR.PRODUCTION_CLUSTER, CR.STAGING_CLUSTER)]
    route = {"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "runtime_key_prefix": CR.RUNTIME_KEY_PREFIX,
        "clusters": [{"name": CR.PRODUCTION_CLUSTER, "weight": 100 - DEFAULT_PERCENT},
                     {"name": CR.STAGING_CLUSTER, "weight": DEFAULT_PERCENT}]}}}
    manager = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                        "HttpConnectionManager",
               "stat_prefix": "canary", "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                                                                            "routes": [route]}]},
               "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                   "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "layered_runtime": {"layers": CR.runtime_layers(data_dir, DEFAULT_PERCENT)},
        "static_resources": {
            "listeners": [{"name": "ingress", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": manager}]}]}],
            "clusters": clusters},
    }


class Envoy:
    def __init__(self, folder: pathlib.Path, data_dir: pathlib.Path, admin_port: int = 0):
        self.folder = folder
        config = folder / "envoy.json"
        config.write_text(json.dumps(envoy_config(data_dir, admin_port)))
        self.address_path = folder / "admin-address.txt"
        self.address_path.unlink(missing_ok=True)
        self.log = open(folder / "envoy.log", "ab")
        self.process = subprocess.Popen([envoy_binary(), "-c", str(config), "--disable-hot-restart", "-l", "warning",
                                         "--admin-address-path", str(self.address_path)],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not (self.address_path.exists() and self.address_path.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not start:\n{(folder / 'envoy.log').read_text()[-3000:]}")
            time.sleep(0.05)
        self.admin = "http://" + self.address_path.read_text().strip()
        self.admin_port = int(self.admin.rsplit(":", 1)[1])

    def runtime(self) -> dict[str, str]:
        with urllib.request.urlopen(f"{self.admin}/runtime", timeout=5) as response:
            entries = json.loads(response.read())["entries"]
        return {key: entries[key]["final_value"] for key in (CR.PRODUCTION_KEY, CR.STAGING_KEY)}

    def layer_values(self, key: str) -> list[str]:
        """The key's value per runtime layer (static, disk, admin)."""
        with urllib.request.urlopen(f"{self.admin}/runtime", timeout=5) as response:
            return json.loads(response.read())["entries"][key]["layer_values"]

    def modify(self, **values: int) -> None:
        query = urllib.parse.urlencode({getattr(CR, key): value for key, value in values.items()})
        urllib.request.urlopen(urllib.request.Request(f"{self.admin}/runtime_modify?{query}", method="POST", data=b""),
                               timeout=5).read()

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.fixture
def envoy_and_monitoring(settings, keys, tmp_path):
    data_dir = tmp_path / "data"
    CR.ensure_persisted(data_dir, DEFAULT_PERCENT)  # what the gateway renderer does before Envoy starts
    envoy = Envoy(tmp_path, data_dir)
    running = start_monitoring(settings, keys, data_dir, envoy_admin=envoy.admin, reconcile_seconds=0.2)
    state = {"envoy": envoy}
    yield state, running, data_dir
    running.client.close()
    running.app.stop(1)
    state["envoy"].stop()


def test_weight_30_is_live_and_survives_an_envoy_restart(envoy_and_monitoring, tmp_path):
    state, monitoring, data_dir = envoy_and_monitoring
    envoy = state["envoy"]
    agent = monitoring.md(role="agent", ops=False)
    assert monitoring.stub.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=agent).percent == 10

    reply = monitoring.stub.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=30), metadata=monitoring.md())
    assert (reply.percent, reply.previous) == (30, 10)
    assert envoy.runtime() == {CR.PRODUCTION_KEY: "70", CR.STAGING_KEY: "30"}
    assert CR.read_persisted(data_dir) == 30

    envoy.stop()
    state["envoy"] = envoy = Envoy(tmp_path, data_dir, admin_port=envoy.admin_port)
    assert envoy.runtime() == {CR.PRODUCTION_KEY: "70", CR.STAGING_KEY: "30"}
    assert envoy.layer_values(CR.STAGING_KEY)[:2] == ["10", "30"]  # the disk layer holds it from the start
    assert monitoring.stub.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=agent).percent == 30

    envoy.modify(PRODUCTION_KEY=50, STAGING_KEY=50)  # a hand edit on the admin listener
    assert wait_for(lambda: envoy.runtime()[CR.STAGING_KEY] == "30"), "monitoring did not re-apply its weight"

    for percent in (0, 100):  # the ends are exact
        monitoring.stub.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=percent),
                                        metadata=monitoring.md())
        assert envoy.runtime()[CR.STAGING_KEY] == str(percent)
        read = monitoring.stub.GetCanaryWeight(monitoring_pb2.GetCanaryWeightRequest(), metadata=agent)
        assert read.percent == percent


def test_shadow_percent_is_live_persisted_beside_the_weight_and_audited(envoy_and_monitoring, tmp_path):
    state, monitoring, data_dir = envoy_and_monitoring
    envoy = state["envoy"]
    agent = monitoring.md(role="agent", ops=False)
    get = monitoring_pb2.GetShadowPercentRequest()
    assert monitoring.stub.GetShadowPercent(get, metadata=agent).percent == 0  # the static default: off
    monitoring.stub.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=20), metadata=monitoring.md())

    reply = monitoring.stub.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=40),
                                             metadata=monitoring.md())
    assert (reply.percent, reply.previous) == (40, 0)
    assert envoy.layer_values(CR.SHADOW_KEY)[-1] == "40" and CR.read_persisted_shadow(data_dir) == 40
    assert CR.read_persisted(data_dir) == 20  # one snapshot holds both values: setting one keeps the other
    monitoring.stub.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=5), metadata=monitoring.md())
    assert CR.read_persisted_shadow(data_dir) == 40

    envoy.stop()
    state["envoy"] = envoy = Envoy(tmp_path, data_dir, admin_port=envoy.admin_port)
    assert envoy.layer_values(CR.SHADOW_KEY)[:2] == ["0", "40"]  # the disk layer holds it from the start
    assert monitoring.stub.GetShadowPercent(get, metadata=agent).percent == 40
    envoy.modify(SHADOW_KEY=90)  # a hand edit is reconciled back
    assert wait_for(lambda: envoy.layer_values(CR.SHADOW_KEY)[-1] == "40"), "monitoring did not re-apply it"

    for bad in (-1, 101):
        with pytest.raises(grpc.RpcError) as refused:
            monitoring.stub.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=bad),
                                             metadata=monitoring.md())
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "percent" in refused.value.details()
    with pytest.raises(grpc.RpcError) as denied:
        monitoring.stub.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=10), metadata=agent)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert CR.read_persisted_shadow(data_dir) == 40

    monitoring.stub.SetShadowPercent(monitoring_pb2.SetShadowPercentRequest(percent=40), metadata=monitoring.md())
    events = monitoring.stub.ListModelEvents(monitoring_pb2.ListModelEventsRequest(), metadata=monitoring.md()).events
    shadow = [(e.actor, e.shadow_percent) for e in events if e.kind == monitoring_pb2.MODEL_EVENT_KIND_SHADOW_PERCENT]
    assert shadow == [("test-admin", 40)]  # a change is an event; setting the same value again is not
