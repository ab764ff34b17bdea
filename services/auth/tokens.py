"""Issuing access tokens: ES256 JWTs with `kid` in the header and iss, aud, sub, role, iat, exp, jti claims.

Verification is not here: auth uses the shared `TokenVerifier` (services/common/identity.py) like every other
service, with the key ring as its key source.
"""
from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Callable

import jwt

from services.auth.keys import ALGORITHM, KeyRing


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    token: str = dataclasses.field(repr=False)
    jti: str
    kid: str
    subject: str
    role: str
    issued_at: int
    expires_at: int

    @property
    def expires_in(self) -> int:
        return self.expires_at - self.issued_at


class TokenIssuer:
    def __init__(self, keys: KeyRing, issuer: str, audience: str, clock: Callable[[], float] = time.time):
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._clock = clock

    def issue(self, subject: str, role: str, ttl_seconds: int) -> IssuedToken:
        kid, private_key = self._keys.signing_key()
        now = int(self._clock())
        jti = uuid.uuid4().hex
        claims = {"iss": self._issuer, "aud": self._audience, "sub": subject, "role": role,
                  "iat": now, "exp": now + ttl_seconds, "jti": jti}
        token = jwt.encode(claims, private_key, algorithm=ALGORITHM, headers={"kid": kid, "typ": "JWT"})
        return IssuedToken(token=token, jti=jti, kid=kid, subject=subject, role=role, issued_at=now,
                           expires_at=now + ttl_seconds)
