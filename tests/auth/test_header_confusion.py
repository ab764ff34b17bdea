"""Issue 13 item 3: a token whose header names RS256 with the published ES256 `kid` made PyJWT raise TypeError, and
every service answered INTERNAL — public RPCs too. The shared verifier now checks a token only with its key's own
algorithm and answers UNAUTHENTICATED to anything it cannot verify; a crafted header never reaches INTERNAL."""
from __future__ import annotations

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from churn.v1 import auth_pb2
from services.common.errors import Unauthenticated
from tests.auth.conftest import b64url, unique, unsigned_parts
from tests.tokens import LocalKeys


def _rs256_header_es256_kid(auth, username):
    """The issue's reproduction: RS256 signed by an attacker's RSA key, naming auth's real ES256 kid."""
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(auth.claims(username, role="admin"), stranger, algorithm="RS256",
                      headers={"kid": auth.app.keys.signing_key()[0]})


def _rs256_header_junk_signature(auth, username):
    return unsigned_parts({"alg": "RS256", "typ": "JWT", "kid": auth.app.keys.signing_key()[0]},
                          auth.claims(username)) + "." + b64url(b"\x01" * 256)


def _kid_is_a_list(auth, username):
    return unsigned_parts({"alg": "ES256", "typ": "JWT", "kid": ["a", "b"]}, auth.claims(username)) + ".c2ln"


def _alg_is_an_object(auth, username):
    return unsigned_parts({"alg": {"x": 1}, "typ": "JWT", "kid": "k"}, auth.claims(username)) + ".c2ln"


def _huge_kid(auth, username):
    return unsigned_parts({"alg": "ES256", "typ": "JWT", "kid": "k" * 3_000}, auth.claims(username)) + ".c2ln"


CRAFTED = {"rs256 header, es256 kid": _rs256_header_es256_kid, "rs256 junk signature": _rs256_header_junk_signature,
           "kid is a list": _kid_is_a_list, "alg is an object": _alg_is_an_object, "3 KB kid": _huge_kid}
RPCS = {  # public ones first: they verify a token when one is sent
    "Register": lambda auth, md: auth.stub.Register(auth_pb2.RegisterRequest(
        username=unique(), password="Correct-Horse-42"), metadata=md, timeout=10),
    "Login": lambda auth, md: auth.stub.Login(auth_pb2.LoginRequest(username="nobody", password="x" * 12),
                                              metadata=md, timeout=10),
    "GetJwks": lambda auth, md: auth.stub.GetJwks(auth_pb2.GetJwksRequest(), metadata=md, timeout=10),
    "VerifySession": lambda auth, md: auth.stub.VerifySession(auth_pb2.VerifySessionRequest(), metadata=md,
                                                              timeout=10),
    "ListUsers": lambda auth, md: auth.stub.ListUsers(auth_pb2.ListUsersRequest(), metadata=md, timeout=10),
}


@pytest.mark.parametrize("rpc", list(RPCS))
@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_headers_are_unauthenticated_on_public_and_protected_rpcs(auth, case, rpc):
    token = CRAFTED[case](auth, unique("victim"))
    with pytest.raises(grpc.RpcError) as refused:
        RPCS[rpc](auth, auth.md(token, key="ops" if rpc == "ListUsers" else "client"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
    assert len(refused.value.details()) < 300


def test_the_verifier_uses_the_keys_algorithm_not_the_headers():
    keys = LocalKeys()
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "x"}, stranger, algorithm="RS256", headers={"kid": keys.kid})
    with pytest.raises(Unauthenticated, match="does not match its key"):
        keys.verifier().verify(token)
    assert keys.verifier().verify(keys.mint()).subject == "alice"
