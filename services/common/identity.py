"""The one token verifier every service uses, so each defends itself even when called directly (not via Envoy).

A token is trusted only after this module checks it: signature against the JWKS (ES256/RS256 only, so `alg: none`
and HS256-with-the-public-key are refused), `kid`, issuer, audience, expiry and role. `x-jwt-*` headers that
Envoy adds are for logs only and never read here. Approval can change after a token is issued, so a
`session_check` (a cached VerifySession call to auth; a local store lookup inside auth) confirms the subject.
"""
from __future__ import annotations

import contextvars
import dataclasses
import hmac
import json
import threading
import time
import urllib.request
from typing import Callable, Mapping, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.common.errors import MAX_ECHO_CHARS, NotReady, PermissionDenied, Unauthenticated, shown

ALLOWED_ALGORITHMS = ("ES256", "RS256")
ROLES = ("agent", "admin", "service", "reloader")
# Roles of service principals (tokens minted by `create-service-token`, on record at auth, never registered).
SERVICE_ROLES = ("service", "reloader")


@dataclasses.dataclass(frozen=True)
class Caller:
    subject: str
    role: str
    token_id: str
    expires_at: int
    token: str = dataclasses.field(repr=False, default="")


_caller_var: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> Caller | None:
    """The verified caller of the RPC being served (None on public RPCs called without a token)."""
    return _caller_var.get()


def set_current_caller(caller: Caller | None) -> contextvars.Token:
    return _caller_var.set(caller)


def reset_current_caller(token: contextvars.Token) -> None:
    _caller_var.reset(token)


def algorithm_of(key) -> str | None:
    """The one algorithm a published public key verifies: ES256 for a P-256 key, RS256 for an RSA key. A token
    is checked only with its key's own algorithm, whatever its header claims."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    return None


class KeySource(Protocol):
    def key_for(self, kid: str):
        """The public key object for `kid`, or None when no published key has that id."""


class JwksKeySource:
    """Public keys from auth's JWKS URL, cached; an unknown `kid` triggers at most one refetch per `min_refetch`
    seconds, so a freshly rotated key is picked up without letting junk tokens hammer auth."""

    def __init__(self, url: str, cache_seconds: int = 60, min_refetch_seconds: float = 1.0, timeout: float = 3.0):
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refetch = min_refetch_seconds
        self._timeout = timeout
        self._keys: dict[str, object] = {}
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def _fetch(self) -> None:
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout) as response:
                document = json.loads(response.read())
        except (OSError, ValueError) as exc:
            raise NotReady(f"cannot fetch signing keys from {self._url}: {exc}") from exc
        self._keys = {jwk["kid"]: jwt.PyJWK(jwk).key for jwk in document.get("keys", []) if "kid" in jwk}
        self._fetched_at = time.monotonic()

    def key_for(self, kid: str):
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if age > self._cache_seconds or (kid not in self._keys and age > self._min_refetch):
                self._fetch()
            return self._keys.get(kid)


SessionCheck = Callable[[Caller], None]


class TokenVerifier:
    def __init__(self, keys: KeySource, issuer: str, audience: str, session_check: SessionCheck | None = None):
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._session_check = session_check
        self._verified: dict[str, Caller] = {}
        self._verified_lock = threading.Lock()

    def verify(self, token: str) -> Caller:
        """Check the token completely and return its caller, or raise Unauthenticated/PermissionDenied.

        A token whose signature and claims already passed is remembered until it expires (an ES256 check costs
        ~0.3 ms a call); the session check still runs on every call, so revocation is not delayed by the cache."""
        with self._verified_lock:
            caller = self._verified.get(token)
        if caller is None or caller.expires_at <= time.time():
            caller = self._verify_signature_and_claims(token)
            with self._verified_lock:
                if len(self._verified) >= 10_000:
                    now = time.time()
                    self._verified = {t: c for t, c in self._verified.items() if c.expires_at > now}
                    if len(self._verified) >= 10_000:
                        self._verified.clear()
                self._verified[token] = caller
        if self._session_check is not None:
            self._session_check(caller)
        return caller

    def _verify_signature_and_claims(self, token: str) -> Caller:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"malformed token: {str(exc)[:MAX_ECHO_CHARS * 3]}") from exc
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ALLOWED_ALGORITHMS:
            raise Unauthenticated(f"token algorithm {shown(alg)} is not accepted (only ES256, RS256)")
        kid = header.get("kid")
        if not kid or not isinstance(kid, str):
            raise Unauthenticated("token has no key id (kid)")
        key = self._keys.key_for(kid)
        if key is None:
            raise Unauthenticated(f"token signed by an unknown key (kid {shown(kid)})")
        if algorithm_of(key) != alg:  # e.g. RS256 named with an ES256 key: PyJWT would raise TypeError
            raise Unauthenticated(f"token algorithm {alg} does not match its key (kid {shown(kid)})")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audience,
                                issuer=self._issuer, options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token audience is not this platform") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("token issuer is not trusted") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {str(exc)[:MAX_ECHO_CHARS * 3]}") from exc
        except (TypeError, ValueError) as exc:  # whatever else a crafted header or key makes PyJWT raise
            raise Unauthenticated("invalid token: cannot be verified with its key") from exc
        role = claims.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise Unauthenticated(f"token role {shown(role)} is not a known role")
        subject, token_id = claims["sub"], claims["jti"]
        if not isinstance(subject, str) or not isinstance(token_id, str):
            raise Unauthenticated("token sub and jti must be strings")
        return Caller(subject=subject, role=role, token_id=token_id, expires_at=int(claims["exp"]), token=token)


class CachedSessionCheck:
    """Wraps a session check (e.g. VerifySession at auth) with a short per-token cache: approval revoked at auth
    takes effect within `ttl_seconds`."""

    def __init__(self, check: SessionCheck, ttl_seconds: float):
        self._check = check
        self._ttl = ttl_seconds
        self._ok_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, caller: Caller) -> None:
        now = time.monotonic()
        with self._lock:
            if self._ok_until.get(caller.token_id, 0.0) > now:
                return
        self._check(caller)
        with self._lock:
            if len(self._ok_until) > 10_000:
                self._ok_until = {k: v for k, v in self._ok_until.items() if v > now}
            self._ok_until[caller.token_id] = now + self._ttl


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token from `authorization: Bearer …`, else from the `access_token` cookie (browser/REST clients)."""
    authorization = metadata.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization header must be 'Bearer <token>'")
        return token.strip()
    for part in metadata.get("cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == "access_token" and value:
            return value
    return None


def check_api_key(presented: str | None, route_keys: tuple[str, ...], all_keys: tuple[str, ...]) -> None:
    """Constant-time comparison (empty keys never match): an unknown key is UNAUTHENTICATED, a known key that
    this route does not take (the client key on an ops route) is PERMISSION_DENIED."""
    if not presented:
        raise Unauthenticated("missing API key (x-api-key)")

    def matches(keys: tuple[str, ...]) -> bool:
        return any([hmac.compare_digest(presented.encode(), key.encode()) for key in keys if key])

    if not matches(route_keys):
        if matches(all_keys):
            raise PermissionDenied("this route needs the ops API key")
        raise Unauthenticated("API key is not valid")


def authorize(caller: Caller, roles: frozenset[str], method: str) -> None:
    if caller.role not in roles:
        raise PermissionDenied(f"role {caller.role!r} may not call {method} (needs one of {sorted(roles)})")
