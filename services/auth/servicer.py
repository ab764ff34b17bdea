"""AuthService RPCs: proto in, `Accounts` call, proto out. Errors are domain errors the interceptor maps; the
only gRPC-specific act here is Login's Set-Cookie initial metadata (Envoy's transcoder passes it to REST)."""
from __future__ import annotations

from google.api import httpbody_pb2
from google.protobuf import timestamp_pb2

from churn.v1 import auth_pb2, auth_pb2_grpc, common_pb2
from services.auth.accounts import Accounts
from services.auth.users import UserRecord
from services.common.access import ROLE_NAMES, ROLE_VALUES
from services.common.errors import InvalidInput, Unauthenticated
from services.common.identity import current_caller


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def _user(record: UserRecord) -> auth_pb2.User:
    return auth_pb2.User(username=record.username, role=ROLE_VALUES[record.role], approved=record.approved,
                         created_at=_timestamp(record.created_at))


def access_cookie(token: str, max_age: int, secure: bool) -> str:
    cookie = f"access_token={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}"
    return cookie + "; Secure" if secure else cookie


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, accounts: Accounts, secure_cookie: bool):
        self._accounts = accounts
        self._secure_cookie = secure_cookie

    def Register(self, request, context):
        if request.role != common_pb2.ROLE_UNSPECIFIED and request.role not in ROLE_NAMES:
            raise InvalidInput("role", f"unknown role value {request.role}")
        role = ROLE_NAMES.get(request.role)
        user = self._accounts.register(request.username, request.password, role, current_caller())
        return auth_pb2.RegisterResponse(user=_user(user))

    def Login(self, request, context):
        token, user = self._accounts.login(request.username, request.password)
        context.send_initial_metadata((("set-cookie", access_cookie(token.token, token.expires_in,
                                                                    self._secure_cookie)),))
        return auth_pb2.LoginResponse(access_token=token.token, token_type="Bearer",
                                      expires_at=_timestamp(token.expires_at), expires_in=token.expires_in,
                                      role=ROLE_VALUES[user.role])

    def VerifySession(self, request, context):
        caller = current_caller()
        if caller is None:  # the access table makes this RPC non-public; defend anyway
            raise Unauthenticated("missing bearer token")
        session = self._accounts.session(caller)
        return auth_pb2.VerifySessionResponse(username=session.username, role=ROLE_VALUES[session.role],
                                              approved=session.approved,
                                              expires_at=_timestamp(session.expires_at))

    def ListUsers(self, request, context):
        users = self._accounts.list_users(request.pending_only)
        return auth_pb2.ListUsersResponse(users=[_user(u) for u in users])

    def ApproveUser(self, request, context):
        user = self._accounts.approve(request.username, request.approve, current_caller())
        return auth_pb2.ApproveUserResponse(user=_user(user))

    def GetJwks(self, request, context):
        body = httpbody_pb2.HttpBody(content_type="application/json", data=self._accounts.keys.jwks_bytes())
        return auth_pb2.GetJwksResponse(jwks=body)

    def RotateKeys(self, request, context):
        status = self._accounts.rotate_keys()
        reply = auth_pb2.RotateKeysResponse(signing_kid=status.signing_kid, next_kid=status.next_kid,
                                            published_kids=status.published_kids)
        if status.next_kid:
            reply.next_signs_from.CopyFrom(_timestamp(status.next_signs_from))
        return reply
