"""`python -m tools.health_probe [auth|inference|monitoring|gateway]` — a container's health check (exit 0 = healthy).

gRPC services answer grpc.health.v1 for "" (SERVING only once ready, e.g. a model loaded); the gateway answers
/healthz from Envoy's health_check filter (every upstream healthy). Ports come from Settings, the inference alias
from MODEL_ALIAS. Without an argument the role is read from PID 1's command line (the image's one HEALTHCHECK).
"""
from __future__ import annotations

import pathlib
import sys
import urllib.request

ROLES = ("auth", "inference", "monitoring", "gateway")


def role_of(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for role in ROLES:
        if f"services.{role}" in text or (role == "gateway" and ("envoy" in text or "-m gateway" in text)):
            return role
    raise SystemExit(f"no health check for {text[:200]!r}")


def check(role: str) -> bool:
    from services.common.settings import Settings

    settings = Settings.from_env()
    if role == "gateway":
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.gateway_port}/healthz", timeout=3) as answer:
            return answer.status == 200
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = {"auth": settings.auth_port, "monitoring": settings.monitoring_port,
            "inference": settings.inference_port(settings.model_alias)}[role]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if argv:
        role = argv[0]
    else:
        role = role_of(pathlib.Path("/proc/1/cmdline").read_bytes().decode(errors="replace").split("\0"))
    if role not in ROLES:
        raise SystemExit(f"role must be one of {', '.join(ROLES)}")
    try:
        healthy = check(role)
    except Exception as error:  # any failure to get an answer is "unhealthy", said in one line for `docker inspect`
        print(f"{role}: {type(error).__name__}: {str(error)[:200]}", file=sys.stderr)
        return 1
    print(f"{role}: {'healthy' if healthy else 'not serving'}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
