"""Tells an inference instance to reload its alias (its `ReloadModel`, called directly at the address Settings
gives for that alias, with the ops key). ReloadModel is for admins and for the `reloader` role alone, and the
inference instance checks whoever calls as it checks anyone:
- a reload an admin's own call asks for (Promote, Rollback) carries that admin's token;
- a reload monitoring starts itself (a finished training run, whoever started it and however long it took; the
  automatic canary's promote; a run finished after a restart) carries monitoring's own credential, a `reloader`
  token (`MONITORING_TOKEN` or `<SECRETS_DIR>/monitoring_token`) that may reload and do nothing else."""
from __future__ import annotations

import grpc
from churn.v1 import inference_pb2, inference_pb2_grpc

from services.common.errors import NotReady
from services.common.settings import Settings
from services.common.token_file import TokenFile


class InferenceReloader:
    def __init__(self, settings: Settings, timeout: float = 120.0):
        self._settings = settings
        self._timeout = timeout
        self._own = TokenFile(settings.monitoring_token, settings.secrets_dir / "monitoring_token", "MONITORING_TOKEN")

    def address(self, alias: str) -> str:
        return self._settings.inference_address(alias)

    def reload(self, alias: str, token: str = "") -> str:
        """Reload the alias's instance with `token`, or monitoring's own credential when it is empty; returns the
        version the instance serves now. No credential, unreachable or refused → NotReady saying which."""
        address = self.address(alias)
        try:
            token = token or self._own.get()
        except NotReady as exc:
            raise NotReady(f"the {alias} inference instance was not told to reload: monitoring has no credential of "
                           f"its own ({exc.message})") from None
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
