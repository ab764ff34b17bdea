"""All configuration, read from the environment in one place.

Every service and the gateway renderer read the same `Settings`, so a port, a key or a limit is never written twice.
Secrets (API keys) come from the environment or, when unset, from the git-ignored secrets folder that
`tools/init_secrets.py` fills on the first `make run`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Mapping

ROOT = pathlib.Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
ENVOY_ADMIN_FILE = "envoy-admin.address"  # in PORTS_DIR: Envoy's --admin-address-path under `make run`
# SuggestRetention's allowed moves (RETENTION_MOVES, comma-separated; vocabulary and start-up validation in
# services/inference/levers.py): contract upgrades, any other payment method, paperless billing either way, the four
# protective add-ons switched on, and monthly discounts in percent.
DEFAULT_RETENTION_MOVES = (
    "contract:one_year,contract:two_year,"
    "payment_method:electronic_check,payment_method:mailed_check,payment_method:bank_transfer_automatic,"
    "payment_method:credit_card_automatic,paperless_billing:yes,paperless_billing:no,"
    "online_security:yes,tech_support:yes,online_backup:yes,device_protection:yes,"
    "discount:5,discount:10,discount:20")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from exc


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    try:
        return float(raw) if raw.strip() else default
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _steps(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Comma-separated weights, strictly rising within 1-100."""
    raw = env.get(name, "")
    if not raw.strip():
        return default
    try:
        steps = tuple(int(part) for part in raw.split(","))
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a comma-separated list of integers") from exc
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"environment variable {name}={raw!r} must rise strictly within 1-100")
    return steps


def _default_jwks_url(auth_host: str, auth_http_port: int) -> str:
    return f"http://{auth_host}:{auth_http_port}/.well-known/jwks.json"


def data_dir_from(env: Mapping[str, str]) -> pathlib.Path:
    """DATA_DIR, default <repo>/var: every store, the registry, outboxes and Envoy's runtime layer live below it."""
    return pathlib.Path(env.get("DATA_DIR") or ROOT / "var").resolve()


def _secret(env: Mapping[str, str], name: str, secrets_dir: pathlib.Path) -> str:
    """The env value, else the file secrets/<name lowercased>, else empty (no default secret ever works)."""
    if env.get(name):
        return env[name]
    path = secrets_dir / name.lower()
    return path.read_text().strip() if path.exists() else ""


@dataclasses.dataclass(frozen=True)
class Settings:
    data_dir: pathlib.Path
    secrets_dir: pathlib.Path
    bind_host: str
    # Where each service is reached (loopback by default; service names in docker-compose / Kubernetes).
    auth_host: str
    inference_production_host: str
    inference_staging_host: str
    monitoring_host: str
    # gRPC ports per service (0 = ephemeral, reported through PORT_FILE).
    auth_port: int
    inference_production_port: int
    inference_staging_port: int
    monitoring_port: int
    # HTTP side ports (/metrics; auth also /.well-known/jwks.json).
    auth_http_port: int
    inference_production_http_port: int
    inference_staging_http_port: int
    monitoring_http_port: int
    gateway_port: int
    envoy_admin_port: int
    # One message-size limit for gRPC servers, channels, the transcoder and CSV bodies.
    max_message_bytes: int
    max_batch_rows: int
    max_csv_rows: int
    # Identity.
    jwt_issuer: str
    jwt_audience: str
    access_token_ttl_seconds: int
    service_token_ttl_seconds: int
    jwks_url: str
    jwks_cache_seconds: int
    key_propagation_seconds: int
    session_check_seconds: int
    secure_cookie: bool
    api_key: str
    ops_api_key: str
    # Envoy stamps forwarded calls with it (x-churn-gateway); services trust request ids only from such calls.
    gateway_secret: str = dataclasses.field(repr=False)
    # Encrypts auth's private signing keys in the users store (the store alone never signs).
    signing_key_secret: str = dataclasses.field(repr=False)
    users_database_url: str
    # Models.
    model_name: str
    model_alias: str
    # Monitoring.
    monitoring_database_url: str
    metrics_update_seconds: int
    canary_percent: int
    # Share of the requests production serves that Envoy also mirrors to staging, until monitoring persists another.
    shadow_percent: int
    # Rate limits (per minute).
    auth_rate_per_minute: int
    predict_rate_per_minute: int
    service_predict_rate_per_minute: int
    # Login/register per peer address on a service port called directly (not through Envoy); 0 = off.
    direct_auth_rate_per_minute: int
    # Gateway: browser origins allowed by CORS (comma-separated in CORS_ALLOWED_ORIGINS; empty = no cross-origin).
    cors_allowed_origins: tuple[str, ...] = ()
    # Auth: argon2 cost (0 = pwdlib/argon2-cffi defaults; tests lower them) and the first admin on first start.
    argon2_time_cost: int = 0
    argon2_memory_kib: int = 0
    bootstrap_admin_username: str = ""
    bootstrap_admin_password_file: str = ""
    # Auth CLI `create-admin`: default username and password (else --password-file or a prompt).
    admin_username: str = ""
    admin_password: str = dataclasses.field(default="", repr=False)
    # Inference's outbox token; empty = the file <secrets_dir>/service_token.
    service_token: str = dataclasses.field(default="", repr=False)
    # Monitoring's own credential (role `reloader`: ReloadModel only) for the reloads it starts itself — a finished
    # training run, the automatic canary's promote; empty = the file <secrets_dir>/monitoring_token.
    monitoring_token: str = dataclasses.field(default="", repr=False)
    # MLflow: a server or database URL (empty = sqlite under data_dir, see mlflow_config) and the experiment.
    mlflow_tracking_uri: str = ""
    mlflow_experiment_name: str = "churn"
    # Retention levers: the allowed moves (names, validated at start) and customers per SuggestRetention request
    # (each scores up to ~85 variants, all in one model call).
    retention_moves: tuple[str, ...] = tuple(DEFAULT_RETENTION_MOVES.split(","))
    retention_max_customers: int = 1000
    # Retrain: the shipped Telco data a candidate may include.
    training_data_path: pathlib.Path = ROOT / "data" / "telco_churn.csv"
    # Canary analysis (AnalyzeCanary): the window and the thresholds of its verdict.
    canary_window_minutes: int = 60
    canary_min_predictions: int = 100
    canary_min_labelled: int = 50
    canary_max_error_rate_increase: float = 0.01
    canary_max_latency_p99_ms: float = 500.0
    canary_max_jensen_shannon: float = 0.1
    canary_max_roc_auc_drop: float = 0.02
    # The automatic canary (off by default): weight steps, how long each step runs before it is judged, and whether
    # a candidate that passes its last step is promoted (on by default once the automatic canary is on).
    canary_auto: bool = False
    canary_auto_steps: tuple[int, ...] = (10, 25, 50, 100)
    canary_auto_interval_seconds: int = 60
    canary_auto_promote: bool = True
    # Drift → retrain: start a Retrain when the production drift share stays >= this (0 = off) for N updates.
    drift_retrain_share: float = 0.0
    drift_retrain_after: int = 3
    # Process: where a server writes its bound ports as JSON (tests, the runner); the stdlib logging level.
    port_file: str = ""
    log_level: str = "INFO"
    # SIGTERM: answer NOT_SERVING and keep serving until the health checker watching this server (Envoy's, every
    # second) has seen it, at most this long; then in-flight calls get SHUTDOWN_GRACE_SECONDS to finish.
    shutdown_drain_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    # Inference: compile the served trees to native code (Treelite + TL2cgen) and where to cache the libraries
    # (None: DATA_DIR/compiled). The key holds the model file's digest, so instances may share one folder.
    compile_models: bool = True
    compiled_models_dir: pathlib.Path | None = None
    # Inference: worker processes per instance on one port (SO_REUSEPORT); default one per core.
    inference_workers: int = 1
    # Inference: how long the outbox shipper lets a batch that is not full fill up before it sends it (0 = at once):
    # monitoring's cost is mostly per call, and at 50 ms a lightly used instance still sent a few rows per call.
    outbox_linger_ms: int = 250
    # Envoy's Prometheus stats on their own listener (the admin stays on loopback); -1 = no such listener, 0 = any.
    envoy_stats_port: int = -1
    # Envoy's worker threads (--concurrency); 0 = Envoy's default, one per hardware thread of the host (not a
    # container's CPU limit). One worker proxies thousands of calls a second; on a host it shares with the services
    # (make run, the bench: 2 cores) a second one only competed with them (bench/RESULTS.md, the gateway's share).
    envoy_concurrency: int = 1
    # `make run`: where each process writes its bound ports (<process>.json, Envoy's admin address in
    # envoy-admin.address), so a peer configured with port 0 is found there (see with_bound_ports).
    ports_dir: pathlib.Path | None = None
    # How long a process waits for the port files of the peers it needs to start (with_bound_ports).
    peer_wait_seconds: float = 120.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        data_dir = data_dir_from(env)
        secrets_dir = pathlib.Path(env.get("SECRETS_DIR") or ROOT / "secrets").resolve()
        jwks_cache = _int(env, "JWKS_CACHE_SECONDS", 60)
        bind_host = env.get("BIND_HOST", "127.0.0.1")
        auth_host = env.get("AUTH_HOST", "127.0.0.1")
        auth_http_port = _int(env, "AUTH_HTTP_PORT", 9101)
        return cls(
            data_dir=data_dir,
            secrets_dir=secrets_dir,
            bind_host=bind_host,
            auth_host=auth_host,
            inference_production_host=env.get("INFERENCE_PRODUCTION_HOST", "127.0.0.1"),
            inference_staging_host=env.get("INFERENCE_STAGING_HOST", "127.0.0.1"),
            monitoring_host=env.get("MONITORING_HOST", "127.0.0.1"),
            auth_port=_int(env, "AUTH_PORT", 50051),
            inference_production_port=_int(env, "INFERENCE_PRODUCTION_PORT", 50052),
            inference_staging_port=_int(env, "INFERENCE_STAGING_PORT", 50053),
            monitoring_port=_int(env, "MONITORING_PORT", 50054),
            auth_http_port=auth_http_port,
            inference_production_http_port=_int(env, "INFERENCE_PRODUCTION_HTTP_PORT", 9102),
            inference_staging_http_port=_int(env, "INFERENCE_STAGING_HTTP_PORT", 9103),
            monitoring_http_port=_int(env, "MONITORING_HTTP_PORT", 9104),
            gateway_port=_int(env, "GATEWAY_PORT", 8080),
            envoy_admin_port=_int(env, "ENVOY_ADMIN_PORT", 9901),
            envoy_stats_port=_int(env, "ENVOY_STATS_PORT", -1),
            envoy_concurrency=_int(env, "ENVOY_CONCURRENCY", 1),
            max_message_bytes=_int(env, "MAX_MESSAGE_MB", 16) * MIB,
            max_batch_rows=_int(env, "MAX_BATCH_ROWS", 5000),
            max_csv_rows=_int(env, "MAX_CSV_ROWS", 50000),
            jwt_issuer=env.get("JWT_ISSUER", "churn-auth"),
            jwt_audience=env.get("JWT_AUDIENCE", "churn-api"),
            access_token_ttl_seconds=_int(env, "ACCESS_TOKEN_TTL_SECONDS", 900),
            service_token_ttl_seconds=_int(env, "SERVICE_TOKEN_TTL_SECONDS", 30 * 24 * 3600),
            jwks_url=env.get("JWKS_URL") or _default_jwks_url(auth_host, auth_http_port),
            jwks_cache_seconds=jwks_cache,
            key_propagation_seconds=_int(env, "KEY_PROPAGATION_SECONDS", jwks_cache + 5),
            session_check_seconds=_int(env, "SESSION_CHECK_SECONDS", 5),
            secure_cookie=env.get("SECURE_COOKIE", "false").lower() in ("1", "true", "yes"),
            api_key=_secret(env, "API_KEY", secrets_dir),
            ops_api_key=_secret(env, "OPS_API_KEY", secrets_dir),
            gateway_secret=_secret(env, "GATEWAY_SECRET", secrets_dir),
            signing_key_secret=_secret(env, "SIGNING_KEY_SECRET", secrets_dir),
            users_database_url=env.get("USERS_DATABASE_URL") or f"sqlite:///{data_dir / 'users.db'}",
            model_name=env.get("MODEL_NAME", "churn-model"),
            model_alias=env.get("MODEL_ALIAS", "production"),
            monitoring_database_url=env.get("MONITORING_DATABASE_URL") or f"sqlite:///{data_dir / 'monitoring.db'}",
            metrics_update_seconds=_int(env, "METRICS_UPDATE_SECONDS", 300),
            canary_percent=_int(env, "CANARY_PERCENT", 10),
            shadow_percent=_int(env, "SHADOW_PERCENT", 0),
            auth_rate_per_minute=_int(env, "AUTH_RATE_PER_MINUTE", 5),
            direct_auth_rate_per_minute=_int(env, "DIRECT_AUTH_RATE_PER_MINUTE", _int(env, "AUTH_RATE_PER_MINUTE", 5)),
            predict_rate_per_minute=_int(env, "PREDICT_RATE_PER_MINUTE", 10),
            service_predict_rate_per_minute=_int(env, "SERVICE_PREDICT_RATE_PER_MINUTE", 60000),
            cors_allowed_origins=tuple(o.strip() for o in env.get("CORS_ALLOWED_ORIGINS", "http://localhost:3000")
                                       .split(",") if o.strip()),
            argon2_time_cost=_int(env, "ARGON2_TIME_COST", 0),
            argon2_memory_kib=_int(env, "ARGON2_MEMORY_KIB", 0),
            bootstrap_admin_username=env.get("BOOTSTRAP_ADMIN_USERNAME", ""),
            bootstrap_admin_password_file=env.get("BOOTSTRAP_ADMIN_PASSWORD_FILE", ""),
            admin_username=env.get("ADMIN_USERNAME", ""),
            admin_password=env.get("ADMIN_PASSWORD", ""),
            service_token=env.get("SERVICE_TOKEN", ""),
            monitoring_token=env.get("MONITORING_TOKEN", ""),
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", ""),
            mlflow_experiment_name=env.get("MLFLOW_EXPERIMENT_NAME") or "churn",
            retention_moves=tuple(m.strip() for m in (env.get("RETENTION_MOVES") or DEFAULT_RETENTION_MOVES)
                                  .split(",") if m.strip()),
            retention_max_customers=_int(env, "RETENTION_MAX_CUSTOMERS", 1000),
            training_data_path=pathlib.Path(env.get("TRAINING_DATA_PATH") or ROOT / "data" / "telco_churn.csv"),
            canary_window_minutes=_int(env, "CANARY_WINDOW_MINUTES", 60),
            canary_min_predictions=_int(env, "CANARY_MIN_PREDICTIONS", 100),
            canary_min_labelled=_int(env, "CANARY_MIN_LABELLED", 50),
            canary_max_error_rate_increase=_float(env, "CANARY_MAX_ERROR_RATE_INCREASE", 0.01),
            canary_max_latency_p99_ms=_float(env, "CANARY_MAX_LATENCY_P99_MS", 500.0),
            canary_max_jensen_shannon=_float(env, "CANARY_MAX_JENSEN_SHANNON", 0.1),
            canary_max_roc_auc_drop=_float(env, "CANARY_MAX_ROC_AUC_DROP", 0.02),
            canary_auto=env.get("CANARY_AUTO", "false").lower() in ("1", "true", "yes"),
            canary_auto_steps=_steps(env, "CANARY_AUTO_STEPS", (10, 25, 50, 100)),
            canary_auto_interval_seconds=_int(env, "CANARY_AUTO_INTERVAL_SECONDS", 60),
            canary_auto_promote=env.get("CANARY_AUTO_PROMOTE", "true").lower() in ("1", "true", "yes"),
            drift_retrain_share=_float(env, "DRIFT_RETRAIN_SHARE", 0.0),
            drift_retrain_after=_int(env, "DRIFT_RETRAIN_AFTER", 3),
            port_file=env.get("PORT_FILE", ""),
            log_level=env.get("LOG_LEVEL", "INFO"),
            shutdown_drain_seconds=_float(env, "SHUTDOWN_DRAIN_SECONDS", 5.0),
            shutdown_grace_seconds=_float(env, "SHUTDOWN_GRACE_SECONDS", 10.0),
            compile_models=env.get("COMPILE_MODELS", "true").lower() in ("1", "true", "yes"),
            compiled_models_dir=pathlib.Path(env["COMPILED_MODELS_DIR"]).resolve() if env.get("COMPILED_MODELS_DIR")
            else None,
            inference_workers=max(1, _int(env, "INFERENCE_WORKERS", os.cpu_count() or 1)),
            ports_dir=pathlib.Path(env["PORTS_DIR"]).resolve() if env.get("PORTS_DIR") else None,
            peer_wait_seconds=_float(env, "PEER_WAIT_SECONDS", 120.0),
            outbox_linger_ms=max(0, _int(env, "OUTBOX_LINGER_MS", 250)),
        )

    @property
    def compiled_cache_dir(self) -> pathlib.Path:
        return self.compiled_models_dir or self.data_dir / "compiled"

    @property
    def auth_address(self) -> str:
        return f"{self.auth_host}:{self.auth_port}"

    @property
    def monitoring_address(self) -> str:
        return f"{self.monitoring_host}:{self.monitoring_port}"

    def inference_address(self, alias: str) -> str:
        return f"{self.inference_host(alias)}:{self.inference_port(alias)}"

    def inference_host(self, alias: str) -> str:
        return self.inference_staging_host if alias == "staging" else self.inference_production_host

    def inference_port(self, alias: str) -> int:
        """The configured port, else (port 0) the one the instance reported in PORTS_DIR: monitoring starts before
        the instances it reloads, so it looks them up when it calls."""
        port = self.inference_staging_port if alias == "staging" else self.inference_production_port
        return port or self.bound_port(f"inference_{alias}")

    def inference_http_port(self, alias: str) -> int:
        port = self.inference_staging_http_port if alias == "staging" else self.inference_production_http_port
        return port or self.bound_port(f"inference_{alias}", "http")

    def envoy_admin_url(self) -> str:
        """Envoy's admin (loopback only): the configured port, else (port 0) the address Envoy wrote in PORTS_DIR
        (an empty port while it has not started: calls to it fail as to a stopped Envoy)."""
        if self.envoy_admin_port or self.ports_dir is None:
            return f"http://127.0.0.1:{self.envoy_admin_port}"
        try:
            return "http://" + (self.ports_dir / ENVOY_ADMIN_FILE).read_text().strip()
        except OSError:
            return "http://127.0.0.1:0"

    def peer_port_file(self, process: str) -> pathlib.Path | None:
        return self.ports_dir / f"{process}.json" if self.ports_dir is not None else None

    def bound_port(self, process: str, kind: str = "grpc") -> int:
        """The port (`grpc` or `http`) a process reported in PORTS_DIR; 0 while it has not bound, or no PORTS_DIR."""
        path = self.peer_port_file(process)
        try:
            return int(json.loads(path.read_text())[kind] or 0) if path is not None else 0
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def with_bound_ports(self, *processes: str) -> "Settings":
        """These Settings with each named peer configured with port 0 given the ports it reported in PORTS_DIR,
        waiting up to `peer_wait_seconds` for it to bind (processes: auth, monitoring, inference_production,
        inference_staging). How `make run` starts everything on port 0: a process needs the peers it connects to
        at start; monitoring finds the instances and Envoy later, when it calls them."""
        if self.ports_dir is None:
            return self
        fields = {"auth": ("auth_port", "auth_http_port"), "monitoring": ("monitoring_port", "monitoring_http_port"),
                  "inference_production": ("inference_production_port", "inference_production_http_port"),
                  "inference_staging": ("inference_staging_port", "inference_staging_http_port")}
        changes: dict[str, int] = {}
        deadline = time.monotonic() + self.peer_wait_seconds
        for process in processes:
            grpc_field, http_field = fields[process]
            if getattr(self, grpc_field):
                continue
            while not self.bound_port(process):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{process} reported no ports in {self.ports_dir} "
                                       f"within {self.peer_wait_seconds:.0f}s")
                time.sleep(0.1)
            changes[grpc_field] = self.bound_port(process)
            changes[http_field] = getattr(self, http_field) or self.bound_port(process, "http")
        bound = dataclasses.replace(self, **changes)
        if "auth_http_port" in changes and self.jwks_url == _default_jwks_url(self.auth_host, self.auth_http_port):
            bound = dataclasses.replace(bound, jwks_url=_default_jwks_url(self.auth_host, changes["auth_http_port"]))
        return bound

    def grpc_options(self) -> list[tuple[str, int]]:
        """Server and channel options: the one message-size limit."""
        return [("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes)]
