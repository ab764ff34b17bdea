"""Tells an inference instance to reload its alias (its `ReloadModel`, called directly at the address Settings
gives for that alias). ReloadModel is an admin RPC with the ops key, so the call carries the token of the admin
whose Promote, Rollback or Retrain asked for it: the inference instance checks that admin as it checks anyone."""
from __future__ import annotations

import grpc
from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import NotReady
from services.common.settings import Settings


class InferenceReloader:
    def __init__(self, settings: Settings, timeout: float = 120.0):
        self._settings = settings
        self._timeout = timeout

    def address(self, alias: str) -> str:
        return self._settings.inference_address(alias)

    def reload(self, alias: str, token: str) -> str:
        """Reload the alias's instance; returns the version it serves now. Unreachable or refused → NotReady."""
        address = self.address(alias)
        metadata = [("x-api-key", self._settings.ops_api_key), ("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(address, options=self._settings.grpc_options()) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            try:
                reply = stub.ReloadModel(inference_pb2.ReloadModelRequest(alias=alias), metadata=metadata,
                                         timeout=self._timeout, wait_for_ready=False)
            except grpc.RpcError as exc:
                raise NotReady(f"the {alias} inference instance at {address} did not reload: "
                               f"{exc.code().name}: {(exc.details() or '')[:200]}") from None
        return reply.current.version
