"""`python -m services.monitoring` — the prediction log, feedback, drift, metrics, model versions and canary
weight on MONITORING_PORT, /metrics on MONITORING_HTTP_PORT; SIGTERM drains."""
from __future__ import annotations

import sys

from services.common import logs
from services.common.auth_client import remote_verifier
from services.common.server import serve_until_signalled
from services.common.settings import Settings
from services.monitoring import app


def main() -> int:
    settings = Settings.from_env().with_bound_ports("auth")  # the instances and Envoy: looked up when called
    if not settings.api_key or not settings.ops_api_key:
        print("API_KEY and OPS_API_KEY must be set (environment or secrets folder): no default key ever works",
              file=sys.stderr)
        return 2
    logs.configure("monitoring", settings.log_level)
    monitoring = app.start(settings, remote_verifier(settings))
    serve_until_signalled(monitoring.host, settings, on_stop=monitoring.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
