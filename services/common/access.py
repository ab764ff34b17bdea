"""The access table, read from the `(churn.v1.access)` method option of every RPC in protos/.

Both the server interceptor and the Envoy renderer read this, so who may call what is written once, in the
contract.
"""
from __future__ import annotations

import dataclasses
import functools

from churn.v1 import access_pb2, auth_pb2, common_pb2, inference_pb2, monitoring_pb2

SERVICE_MODULES = (auth_pb2, inference_pb2, monitoring_pb2)
ROLE_NAMES = {common_pb2.ROLE_AGENT: "agent", common_pb2.ROLE_ADMIN: "admin", common_pb2.ROLE_SERVICE: "service",
              common_pb2.ROLE_RELOADER: "reloader"}
ROLE_VALUES = {name: value for value, name in ROLE_NAMES.items()}


@dataclasses.dataclass(frozen=True)
class MethodAccess:
    service: str  # full service name, e.g. churn.v1.InferenceService
    method: str  # short name, e.g. Predict
    public: bool
    roles: frozenset[str]
    ops_key_only: bool
    rate: str  # "auth", "predict" or "none"
    retryable: bool
    timeout_ms: int
    routing: str  # "direct", "canary", "alias" or "internal"
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method}"


@functools.cache
def access_table() -> dict[str, MethodAccess]:
    """Full method path → its access entry, for every RPC of every churn.v1 service."""
    table: dict[str, MethodAccess] = {}
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                option = method.GetOptions().Extensions[access_pb2.access]
                entry = MethodAccess(
                    service=service.full_name,
                    method=method.name,
                    public=option.public,
                    roles=frozenset(ROLE_NAMES[r] for r in option.roles),
                    ops_key_only=option.api_key == access_pb2.API_KEY_CLASS_OPS,
                    rate=access_pb2.RateClass.Name(option.rate).removeprefix("RATE_CLASS_").lower(),
                    retryable=option.retryable,
                    timeout_ms=option.timeout_ms,
                    routing=access_pb2.Routing.Name(option.routing).removeprefix("ROUTING_").lower(),
                    client_streaming=method.client_streaming,
                    server_streaming=method.server_streaming,
                )
                table[entry.path] = entry
    return table


def service_names(module) -> list[str]:
    """Full names of the services a generated module defines (for reflection and health)."""
    return [service.full_name for service in module.DESCRIPTOR.services_by_name.values()]
