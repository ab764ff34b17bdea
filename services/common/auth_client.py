"""How a service other than auth verifies callers: JWKS from auth's HTTP side port, plus a cached VerifySession
at auth so a user whose approval was withdrawn is refused within `session_check_seconds`."""
from __future__ import annotations

import grpc

from churn.v1 import auth_pb2, auth_pb2_grpc
from services.common.errors import NotReady, PermissionDenied, Unauthenticated
from services.common.identity import CachedSessionCheck, Caller, JwksKeySource, TokenVerifier
from services.common.settings import Settings


def channel(settings: Settings, address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=settings.grpc_options())


class AuthSessionCheck:
    def __init__(self, settings: Settings):
        self._stub = auth_pb2_grpc.AuthServiceStub(channel(settings, settings.auth_address))
        self._api_key = settings.api_key

    def __call__(self, caller: Caller) -> None:
        metadata = (("authorization", f"Bearer {caller.token}"), ("x-api-key", self._api_key))
        try:
            self._stub.VerifySession(auth_pb2.VerifySessionRequest(), metadata=metadata, timeout=3)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(error.details()) from None
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(error.details()) from None
            raise NotReady(f"auth service unavailable for session check: {error.code().name}") from None


def remote_verifier(settings: Settings) -> TokenVerifier:
    keys = JwksKeySource(settings.jwks_url, cache_seconds=settings.jwks_cache_seconds)
    check = CachedSessionCheck(AuthSessionCheck(settings), settings.session_check_seconds)
    return TokenVerifier(keys, settings.jwt_issuer, settings.jwt_audience, session_check=check)
