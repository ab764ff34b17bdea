"""The whole suite behind the real Envoy, once per session: trained registry → auth (first admin, service token,
monitoring's reloader token) → monitoring → inference production + staging (each shipping its outbox with the
service token) → Envoy rendered with the bound ports, ready when /clusters shows every upstream healthy.

The main gateway has generous rate limits so the flows are never throttled; rate-limit tests start their own Envoy
with the seed's limits against the same services (DESIGN clarification 2)."""
from __future__ import annotations

import concurrent.futures
import dataclasses
import http.client
import json
import pathlib
import secrets
import time
import urllib.request
import uuid

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from churn.v1 import auth_pb2, auth_pb2_grpc, common_pb2, inference_pb2_grpc, monitoring_pb2, monitoring_pb2_grpc
from services.common.settings import Settings
from services.common.telco_csv import parse_telco_csv
from tests.e2e.envoy_process import EnvoyProcess, free_port
from tests.harness import ROOT, ServiceProcess, run_module

TELCO_CSV = ROOT / "data" / "telco_churn.csv"
ADMIN = "admin"
CHEAP_ARGON2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024"}
EXPIRING_TTL = 2  # seconds: a real auth-signed token that has expired by the time the rejection test runs


def metric_total(http_port: int, name: str = "churn_grpc_requests_total", **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=3).read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclasses.dataclass
class Suite:
    env: dict[str, str]
    settings: Settings
    workdir: pathlib.Path
    gateway: EnvoyProcess
    services: dict[str, ServiceProcess]
    admin_password: str
    service_token: str
    expiring_token: str
    expiring_token_exp: float

    # ---- gRPC
    def channel(self, gateway: EnvoyProcess | None = None) -> grpc.Channel:
        return grpc.insecure_channel((gateway or self.gateway).address, options=self.settings.grpc_options())

    def stubs(self, gateway: EnvoyProcess | None = None):
        channel = self.channel(gateway)
        return (auth_pb2_grpc.AuthServiceStub(channel), inference_pb2_grpc.InferenceServiceStub(channel),
                monitoring_pb2_grpc.MonitoringServiceStub(channel))

    def md(self, token: str | None = None, key: str | None = "client", **extra: str) -> list[tuple[str, str]]:
        metadata = []
        if key is not None:
            metadata.append(("x-api-key", {"client": self.settings.api_key, "ops": self.settings.ops_api_key}
                             .get(key, key)))
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        metadata += [(k.replace("_", "-"), v) for k, v in extra.items()]
        return metadata

    # ---- REST
    def rest(self, method: str, path: str, body=None, *, token: str | None = None, key: str | None = "client",
             headers: dict[str, str] | None = None, gateway: EnvoyProcess | None = None,
             source: str | None = None, timeout: float = 60) -> Reply:
        envoy = gateway or self.gateway
        connection = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=timeout,
                                                source_address=(source, 0) if source else None)
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["x-api-key"] = {"client": self.settings.api_key, "ops": self.settings.ops_api_key}.get(key, key)
        if token:
            all_headers["authorization"] = f"Bearer {token}"
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            all_headers.setdefault("content-type", "application/json")
        try:
            connection.request(method, path, body=body, headers=all_headers)
            response = connection.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            connection.close()

    # ---- users
    def login(self, username: str, password: str, gateway: EnvoyProcess | None = None) -> str:
        auth, _, _ = self.stubs(gateway)
        return auth.Login(auth_pb2.LoginRequest(username=username, password=password), metadata=self.md(),
                          timeout=10).access_token

    def admin_token(self) -> str:
        return self.login(ADMIN, self.admin_password)

    def approved_agent(self, prefix: str = "agent") -> tuple[str, str, str]:
        """A registered, approved agent: (username, password, token)."""
        username = f"{prefix}-{uuid.uuid4().hex[:8]}"
        password = "pw-" + secrets.token_urlsafe(12)
        auth, _, _ = self.stubs()
        auth.Register(auth_pb2.RegisterRequest(username=username, password=password), metadata=self.md(), timeout=10)
        auth.ApproveUser(auth_pb2.ApproveUserRequest(username=username, approve=True),
                         metadata=self.md(self.admin_token(), key="ops"), timeout=10)
        return username, password, self.login(username, password)

    def set_canary(self, percent: int) -> None:
        """SetCanaryWeight as the admin; Envoy's runtime must say so at once."""
        _, _, monitoring = self.stubs()
        monitoring.SetCanaryWeight(monitoring_pb2.SetCanaryWeightRequest(percent=percent),
                                   metadata=self.md(self.admin_token(), key="ops"), timeout=5)
        assert self.gateway.runtime()["routing.inference.inference_staging"] == str(percent)

    def rpc_count(self, service: str, method: str | None = None) -> float:
        process = self.services[service]
        return metric_total(process.http_port, **({"method": method} if method else {}))


@pytest.fixture(scope="session")
def customers() -> list[common_pb2.Customer]:
    data = TELCO_CSV.read_bytes()
    return parse_telco_csv(data, len(data) + 1, 100_000).customers()


def start_suite(base: dict[str, str], workdir: pathlib.Path, **overrides: str) -> Suite:
    """Every process of the suite over the registry in `base` (its DATA_DIR), with `overrides` in the environment."""
    workdir.mkdir(exist_ok=True)
    env = dict(base, **CHEAP_ARGON2)
    env.update({"ENVOY_ADMIN_PORT": str(free_port()), "GATEWAY_PORT": "0", "LOG_LEVEL": "INFO",
                "AUTH_RATE_PER_MINUTE": "100000", "PREDICT_RATE_PER_MINUTE": "100000",
                "SERVICE_PREDICT_RATE_PER_MINUTE": "1000000", "CANARY_PERCENT": "0",
                # Envoy refreshes its JWKS about every JWKS_CACHE_SECONDS (5): a rotated key signs 3 s after that
                "KEY_PROPAGATION_SECONDS": "8"}, **overrides)
    secrets_dir = pathlib.Path(env["SECRETS_DIR"])
    secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    password_file = secrets_dir / "admin_password"
    admin_password = "pw-" + secrets.token_urlsafe(16)
    password_file.write_text(admin_password)
    password_file.chmod(0o600)
    run_module("services.auth", env, "create-admin", "--username", ADMIN, "--password-file", str(password_file))
    token_file = secrets_dir / "service_token"
    run_module("services.auth", env, "create-service-token", "--name", "inference-outbox", "--output", str(token_file))
    run_module("services.auth", env, "create-service-token", "--name", "monitoring", "--role", "reloader",
               "--output", str(secrets_dir / "monitoring_token"))  # monitoring's own reloads (Retrain, auto canary)
    expiring = run_module("services.auth", env, "create-service-token", "--name", "expiring",
                          "--ttl-seconds", str(EXPIRING_TTL)).stdout.strip().splitlines()[0]
    expiring_exp = time.time() + EXPIRING_TTL

    started: dict[str, ServiceProcess] = {}
    try:
        started["auth"] = ServiceProcess("auth", "services.auth", env, workdir, args=("serve",)).wait_ready()
        env.update(AUTH_PORT=str(started["auth"].port), AUTH_HTTP_PORT=str(started["auth"].http_port))
        # monitoring reloads the inference instances (Promote, Retrain) and reads their metrics at the addresses
        # Settings gives: reserve their ports before it starts, as a deployment fixes them
        for alias in ("production", "staging"):
            env[f"INFERENCE_{alias.upper()}_PORT"] = str(free_port())
            env[f"INFERENCE_{alias.upper()}_HTTP_PORT"] = str(free_port())  # AnalyzeCanary reads their error rate
        started["monitoring"] = ServiceProcess("monitoring", "services.monitoring", env, workdir).wait_ready(120)
        env.update(MONITORING_PORT=str(started["monitoring"].port),
                   MONITORING_HTTP_PORT=str(started["monitoring"].http_port))
        for alias in ("production", "staging"):
            started[alias] = ServiceProcess(f"inference_{alias}", "services.inference", dict(env, MODEL_ALIAS=alias),
                                            workdir)
        for alias in ("production", "staging"):
            started[alias].wait_ready(120)
            env[f"INFERENCE_{alias.upper()}_PORT"] = str(started[alias].port)
        settings = Settings.from_env(env)
        gateway = EnvoyProcess("envoy", settings, workdir).wait_ready()
    except BaseException:
        for process in started.values():
            process.stop()
        raise
    return Suite(env=env, settings=settings, workdir=workdir, gateway=gateway, services=started,
                 admin_password=admin_password, service_token=token_file.read_text().strip(),
                 expiring_token=expiring, expiring_token_exp=expiring_exp)


def stop_suite(suite: Suite) -> None:
    """The services at once while Envoy still runs: each drains until Envoy's health checker has seen it
    NOT_SERVING (about a second); with Envoy gone first, each waited its whole SHUTDOWN_DRAIN_SECONDS in turn."""
    with concurrent.futures.ThreadPoolExecutor(len(suite.services)) as pool:
        list(pool.map(ServiceProcess.stop, suite.services.values()))
    suite.gateway.stop()


@pytest.fixture
def canary_restored(suite):
    """For tests that move the canary weight: back to the suite's 0 however the test ends, so the tests that
    expect every prediction from production never see a weight left behind by a failed one."""
    yield
    suite.set_canary(0)


@dataclasses.dataclass
class Reference:
    """The model aliased production, loaded by hand from the registry: the exact answer the gateway must give."""
    version: str
    threshold: float
    flavor: str
    model: object

    def probability(self, customers):
        from services.common import features
        from tests import natives

        return natives.raw_probability(self.flavor, self.model, features.encode_customers(customers))


@pytest.fixture(scope="session")
def production_reference(trained_registry, tmp_path_factory) -> Reference:
    from services.common import mlflow_config
    from services.common import model_registry as R
    from tests import natives

    settings = Settings.from_env(trained_registry)
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    version, root = natives.download(registry, "production", tmp_path_factory.mktemp("production-reference"))
    flavor, model = natives.raw_native(root)
    return Reference(str(version), float(R.read_model_info(root)["threshold"]), flavor, model)


@pytest.fixture(scope="session")
def suite(trained_registry, suite_workdir) -> Suite:
    suite = start_suite(trained_registry, suite_workdir / "e2e")
    yield suite
    stop_suite(suite)


@pytest.fixture(scope="session")
def limited_gateway(suite) -> EnvoyProcess:
    """A second Envoy over the same services with the seed's limits (5/min auth per client, 10/min predictions per
    agent), so rate-limit tests neither throttle nor are disturbed by the flows."""
    env = dict(suite.env, ENVOY_ADMIN_PORT="0", GATEWAY_PORT="0", AUTH_RATE_PER_MINUTE="5",
               PREDICT_RATE_PER_MINUTE="10", SERVICE_PREDICT_RATE_PER_MINUTE="60000")
    gateway = EnvoyProcess("envoy_limited", Settings.from_env(env), suite.workdir).wait_ready()
    yield gateway
    gateway.stop()


def pytest_itemcollected(item):
    """schemathesis (4.32) makes one item per REST operation, but under pytest 9.2 all get the bare test's node id:
    give each its operation (`test_rest_fuzz.py::test_…[GET /v1/canary]`), so failures and durations say which."""
    label = getattr(item, "operation_label", None)
    if label and item.id.params is None:
        item._id = item.id.with_params(label)
