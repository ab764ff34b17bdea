"""Test signing keys and tokens: an ES256 key pair, a KeySource over it, and a minting helper, so contract tests
can verify tokens without the auth service (auth's own tests use the real issuer)."""
from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from services.common.identity import TokenVerifier

ISSUER = "churn-auth"
AUDIENCE = "churn-api"


class LocalKeys:
    def __init__(self, kid: str = "test-key"):
        self.kid = kid
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    def key_for(self, kid: str):
        return self.private_key.public_key() if kid == self.kid else None

    def mint(self, subject: str = "alice", role: str = "agent", ttl: int = 300, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "role": role, "iat": now, "exp": now + ttl,
                  "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return jwt.encode(claims, self.private_key, algorithm="ES256", headers={"kid": self.kid})

    def verifier(self, session_check=None) -> TokenVerifier:
        return TokenVerifier(self, ISSUER, AUDIENCE, session_check=session_check)
