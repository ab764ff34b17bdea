"""The access table, read from the `(churn.v1.access)` method option of every RPC in protos/, and for the Open
Inference Protocol's methods (a contract kept as the standard wrote it) from access.proto's `(external_access)`
entries.

Both the server interceptor and the Envoy renderer read this, so who may call what is written once, in the
contract.
"""
from __future__ import annotations

import dataclasses
import functools

import grpc_predict_v2_pb2
from churn.v1 import access_pb2, auth_pb2, common_pb2, inference_pb2, monitoring_pb2

SERVICE_MODULES = (auth_pb2, inference_pb2, monitoring_pb2)  # churn.v1: REST-transcoded, (access) on each method
OPEN_INFERENCE_MODULE = grpc_predict_v2_pb2  # inference.GRPCInferenceService: gRPC only, external access entries
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


def _entry(method, option: access_pb2.Access) -> MethodAccess:
    return MethodAccess(
        service=method.containing_service.full_name,
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


def _external_entries() -> dict[str, MethodAccess]:
    """The `(external_access)` entries: each must name a method of the Open Inference Protocol's service, once, and
    that service must have no method without one (a method the gateway would not route)."""
    service = OPEN_INFERENCE_MODULE.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {f"{service.full_name}.{m.name}": m for m in service.methods}
    entries: dict[str, MethodAccess] = {}
    for item in access_pb2.DESCRIPTOR.GetOptions().Extensions[access_pb2.external_access]:
        if item.method not in methods or item.method in entries:
            raise ValueError(f"external_access: {item.method!r} is not a method of {service.full_name} or is listed "
                             "twice")
        entries[item.method] = _entry(methods[item.method], item.access)
    if set(entries) != set(methods):
        raise ValueError(f"external_access: no entry for {sorted(set(methods) - set(entries))}")
    return {entry.path: entry for entry in entries.values()}


@functools.cache
def access_table() -> dict[str, MethodAccess]:
    """Full method path → its access entry, for every RPC of every churn.v1 service and of the Open Inference
    Protocol's service."""
    table: dict[str, MethodAccess] = {}
    for module in SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                entry = _entry(method, method.GetOptions().Extensions[access_pb2.access])
                table[entry.path] = entry
    table.update(_external_entries())
    return table


def service_names(module) -> list[str]:
    """Full names of the services a generated module defines (for reflection and health)."""
    return [service.full_name for service in module.DESCRIPTOR.services_by_name.values()]
