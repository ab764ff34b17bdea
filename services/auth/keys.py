"""Signing keys (ES256) kept in the users store, so every auth replica signs and publishes the same set.

Timeline of a rotation (DESIGN clarification 10): `rotate()` adds a key whose `signs_from` is now + the
propagation delay (>= Envoy's JWKS cache). From that moment it is published in the JWKS but does not sign; once
`signs_from` passes it becomes the signer and the previous key retires. A retired key stays published until every
token it signed has expired: access tokens live `access_ttl` seconds after the retirement, service tokens are
tracked one by one in the store. Keys no longer published are pruned.

The key ring is also auth's own `KeySource` for the shared TokenVerifier: it reads the store, never the HTTP JWKS.

Private keys are stored encrypted (PKCS#8, the best encryption `cryptography` offers) with `SIGNING_KEY_SECRET`,
which lives in the secrets folder or the environment, never in the store: a copied users database alone signs
nothing. Keys written by an older version in clear are re-encrypted at start.
"""
from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from typing import Callable

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.auth.users import KeyRecord, UserStore

ALGORITHM = "ES256"
# Margin after a key's last token expiry before it leaves the JWKS: clock skew between replicas and verifiers.
RETIRE_MARGIN_SECONDS = 60.0
# The JWKS is fetched rarely (every cache period per verifier), so it is served nearly straight from the store.
JWKS_MAX_AGE_SECONDS = 0.2


@dataclasses.dataclass(frozen=True)
class KeyStatus:
    signing_kid: str
    next_kid: str
    next_signs_from: float
    published_kids: list[str]


class KeySecretError(RuntimeError):
    """The signing keys cannot be used: no SIGNING_KEY_SECRET, or not the one they were encrypted with."""


def _encrypt(private, secret: str) -> str:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(secret.encode())).decode()


def _decrypt(pem: str, secret: str, kid: str):
    try:
        return serialization.load_pem_private_key(pem.encode(), secret.encode())
    except (TypeError, ValueError):
        raise KeySecretError(f"signing key {kid} cannot be decrypted with SIGNING_KEY_SECRET (wrong secret, or "
                             "the store was copied without it)") from None


def is_encrypted(pem: str) -> bool:
    return "ENCRYPTED PRIVATE KEY" in pem


def new_key(signs_from: float, now: float, secret: str) -> KeyRecord:
    private = ec.generate_private_key(ec.SECP256R1())
    kid = f"{time.strftime('%Y%m%d', time.gmtime(now))}-{uuid.uuid4().hex[:12]}"
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": kid, "alg": ALGORITHM, "use": "sig"})
    return KeyRecord(kid=kid, algorithm=ALGORITHM, private_pem=_encrypt(private, secret),
                     public_jwk=json.dumps(jwk, sort_keys=True),
                     created_at=now, signs_from=signs_from)


class KeyRing:
    def __init__(self, store: UserStore, propagation_seconds: float, access_ttl_seconds: float, *, secret: str,
                 refresh_seconds: float = 2.0, clock: Callable[[], float] = time.time):
        if not secret:
            raise KeySecretError("SIGNING_KEY_SECRET is not set (env or secrets/signing_key_secret; `make secrets` "
                                 "creates it): signing keys are never stored in clear")
        self._secret = secret
        self._store = store
        self._propagation = propagation_seconds
        self._access_ttl = access_ttl_seconds
        self._refresh = refresh_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: list[KeyRecord] = []
        self._service_expiry: dict[str, float] = {}
        self._loaded_at = float("-inf")
        self._private: dict[str, object] = {}
        self._public: dict[str, object] = {}

    # --- state --------------------------------------------------------------------------------------------
    def _load(self, force: bool = False, max_age: float | None = None) -> list[KeyRecord]:
        """The key list, re-read when older than `max_age` (default `refresh_seconds`): rotations made by another
        replica or the CLI are seen without a restart."""
        with self._lock:
            age = time.monotonic() - self._loaded_at
            if force or age > (self._refresh if max_age is None else max_age):
                self._keys = self._store.list_keys()
                self._service_expiry = self._store.service_token_expiry_by_kid()
                self._loaded_at = time.monotonic()
            return self._keys

    def _classify(self, keys: list[KeyRecord], now: float) -> tuple[KeyRecord | None, list[KeyRecord], list[KeyRecord]]:
        """(signer, pending keys, published retired keys) at `now`; keys are sorted by signs_from."""
        active = [k for k in keys if k.signs_from <= now]
        pending = [k for k in keys if k.signs_from > now]
        signer = active[-1] if active else None
        retired = []
        for key, successor in zip(active, active[1:]):
            last_token_expiry = max(successor.signs_from + self._access_ttl, self._service_expiry.get(key.kid, 0.0))
            if last_token_expiry + RETIRE_MARGIN_SECONDS > now:
                retired.append(key)
        return signer, pending, retired

    def ensure(self) -> None:
        """On start: create the first key (signing at once: no cache can hold an older JWKS yet); encrypt keys an
        older version stored in clear; check the secret opens the keys (fail at start, not at the first login)."""
        keys = self._load(force=True)
        if not keys:
            now = self._clock()
            self._store.add_key(new_key(signs_from=now, now=now, secret=self._secret))
            keys = self._load(force=True)
        for key in keys:
            if is_encrypted(key.private_pem):
                _decrypt(key.private_pem, self._secret, key.kid)
            else:
                private = serialization.load_pem_private_key(key.private_pem.encode(), None)
                self._store.set_key_pem(key.kid, _encrypt(private, self._secret))
        self._load(force=True)

    def rotate(self) -> KeyStatus:
        """Publish a new key now; it signs after the propagation delay. Prunes keys no longer published."""
        now = self._clock()
        self._store.add_key(new_key(signs_from=now + self._propagation, now=now, secret=self._secret))
        keys = self._load(force=True)
        signer, pending, retired = self._classify(keys, now)
        keep = {k.kid for k in [*pending, *retired]} | ({signer.kid} if signer else set())
        self._store.delete_keys([k.kid for k in keys if k.kid not in keep])
        self._load(force=True)
        return self.status()

    def status(self) -> KeyStatus:
        now = self._clock()
        signer, pending, retired = self._classify(self._load(), now)
        upcoming = pending[-1] if pending else None
        return KeyStatus(signing_kid=signer.kid if signer else "",
                         next_kid=upcoming.kid if upcoming else "",
                         next_signs_from=upcoming.signs_from if upcoming else 0.0,
                         published_kids=[k.kid for k in self._published(now)])

    def _published(self, now: float, max_age: float | None = None) -> list[KeyRecord]:
        signer, pending, retired = self._classify(self._load(max_age=max_age), now)
        return [*retired, *([signer] if signer else []), *pending]

    # --- use ----------------------------------------------------------------------------------------------
    def signing_key(self) -> tuple[str, object]:
        """(kid, private key) of the key that signs now."""
        signer, _, _ = self._classify(self._load(), self._clock())
        if signer is None:
            raise RuntimeError("no signing key is active (the key ring was not initialised)")
        if signer.kid not in self._private:
            self._private[signer.kid] = _decrypt(signer.private_pem, self._secret, signer.kid)
        return signer.kid, self._private[signer.kid]

    def jwks(self) -> dict:
        """The published keys as read from the store at most JWKS_MAX_AGE ago: a key added by another replica or
        the CLI reaches Envoy at its next fetch, well inside the propagation delay."""
        published = self._published(self._clock(), max_age=JWKS_MAX_AGE_SECONDS)
        return {"keys": [json.loads(k.public_jwk) for k in published]}

    def jwks_bytes(self) -> bytes:
        return json.dumps(self.jwks(), separators=(",", ":")).encode()

    def key_for(self, kid: str):
        """KeySource for auth's own TokenVerifier: the public key if `kid` is published now, else None."""
        published = {k.kid: k for k in self._published(self._clock())}
        if kid not in published:
            published = {k.kid: k for k in self._published_fresh()}
            if kid not in published:
                return None
        if kid not in self._public:
            self._public[kid] = jwt.PyJWK(json.loads(published[kid].public_jwk)).key
        return self._public[kid]

    def _published_fresh(self) -> list[KeyRecord]:
        """Re-read at most once a second on an unknown kid (a key another replica just added)."""
        if time.monotonic() - self._loaded_at > 1.0:
            self._load(force=True)
        return self._published(self._clock())
