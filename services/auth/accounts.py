"""What auth does, as plain Python: register, login, sessions, approval, service tokens, key rotation.

The servicer translates protos to these calls; the CLI calls them directly. `check_session` is auth's LOCAL
session check for the shared TokenVerifier: it reads the store on every call (no cache), so inside auth a revoked
approval or service token fails at once; other services see it within `session_check_seconds` through their
cached VerifySession call.
"""
from __future__ import annotations

import dataclasses
import logging

from services.auth import metrics
from services.auth.keys import KeyRing, KeyStatus
from services.auth.passwords import PASSWORD_MAX, PasswordHasher, validate_password, validate_username
from services.auth.tokens import IssuedToken, TokenIssuer
from services.auth.users import UserRecord, UserStore
from services.common.errors import (AlreadyExists, FailedPrecondition, InvalidInput, PermissionDenied,
                                    Unauthenticated)
from services.common.identity import SERVICE_ROLES, Caller

log = logging.getLogger("churn.auth")

SERVICE_SUBJECT_PREFIX = "service:"  # ':' is outside the username charset, so no user can collide with it
BAD_CREDENTIALS = "invalid username or password"


@dataclasses.dataclass(frozen=True)
class Session:
    username: str
    role: str
    approved: bool
    expires_at: int


class Accounts:
    def __init__(self, store: UserStore, hasher: PasswordHasher, keys: KeyRing, issuer: TokenIssuer,
                 access_ttl_seconds: int, service_ttl_seconds: int):
        self.store = store
        self.keys = keys
        self._hasher = hasher
        self._issuer = issuer
        self._access_ttl = access_ttl_seconds
        self._service_ttl = service_ttl_seconds

    # --- users --------------------------------------------------------------------------------------------
    def register(self, username: str, password: str, role: str | None, caller: Caller | None) -> UserRecord:
        """Self-registration: an unapproved agent. An admin caller creates approved users, admins included."""
        role = role or "agent"
        by_admin = caller is not None and caller.role == "admin"
        try:
            if role in SERVICE_ROLES:
                raise PermissionDenied(f"role {role!r} cannot be registered; service tokens are minted with "
                                       "`python -m services.auth create-service-token`")
            if role == "admin" and not by_admin:
                raise PermissionDenied("only an admin may register an admin")
            if role not in ("agent", "admin"):
                raise InvalidInput("role", f"unknown role {role!r}")
            validate_username(username)
            validate_password(password, username)
            user = self.store.create_user(username, self._hasher.hash(password), role, approved=by_admin)
        except PermissionDenied:
            metrics.REGISTRATIONS.labels("denied").inc()
            raise
        except InvalidInput:
            metrics.REGISTRATIONS.labels("invalid").inc()
            raise
        except AlreadyExists:
            metrics.REGISTRATIONS.labels("duplicate").inc()
            raise
        metrics.REGISTRATIONS.labels("created").inc()
        log.info("user registered", extra={"fields": {"username": username, "role": role, "approved": by_admin,
                                                      "by": caller.subject if caller else None}})
        return user

    def create_admin(self, username: str, password: str) -> UserRecord:
        """The first admin (CLI or bootstrap environment): approved at once."""
        validate_username(username)
        validate_password(password, username)
        user = self.store.create_user(username, self._hasher.hash(password), "admin", approved=True)
        log.info("admin created", extra={"fields": {"username": username}})
        return user

    def bootstrap_admin(self, username: str, password: str) -> bool:
        """Create the admin from the environment only while the store has no admin at all."""
        if self.store.count_users(role="admin"):
            return False
        self.create_admin(username, password)
        return True

    def login(self, username: str, password: str) -> tuple[IssuedToken, UserRecord]:
        try:
            if not username:
                raise InvalidInput("username", "is required")
            if not password:
                raise InvalidInput("password", "is required")
            if len(password) > PASSWORD_MAX:
                raise InvalidInput("password", f"must be at most {PASSWORD_MAX} characters long")
        except InvalidInput:
            metrics.LOGINS.labels("invalid").inc()
            raise
        user = self.store.get_user(username)
        if user is None:
            self._hasher.burn(password)  # same cost as a real check: no "which usernames exist" oracle
            metrics.LOGINS.labels("bad_credentials").inc()
            raise Unauthenticated(BAD_CREDENTIALS)
        matches, new_hash = self._hasher.verify(password, user.password_hash)
        if not matches:
            metrics.LOGINS.labels("bad_credentials").inc()
            raise Unauthenticated(BAD_CREDENTIALS)
        if new_hash:
            self.store.set_password_hash(username, new_hash)
        if not user.approved:
            metrics.LOGINS.labels("unapproved").inc()
            raise PermissionDenied(f"user {username!r} is not approved yet; an admin must approve it first")
        token = self._issuer.issue(username, user.role, self._access_ttl)
        metrics.LOGINS.labels("ok").inc()
        metrics.TOKENS_ISSUED.labels(user.role).inc()
        return token, user

    def list_users(self, pending_only: bool) -> list[UserRecord]:
        return self.store.list_users(pending_only)

    def approve(self, username: str, approve: bool, caller: Caller | None = None) -> UserRecord:
        validate_username(username)
        user = self.store.get_user(username)
        if user is not None and not approve and user.role == "admin" and user.approved \
                and self.store.count_users(role="admin", approved=True) <= 1:
            raise FailedPrecondition(f"user {username!r} is the last approved admin; approve another admin first")
        user = self.store.set_approved(username, approve)
        log.info("approval changed", extra={"fields": {"username": username, "approved": approve,
                                                      "by": caller.subject if caller else None}})
        return user

    # --- sessions -----------------------------------------------------------------------------------------
    def check_session(self, caller: Caller) -> None:
        """Local session check: users must exist, be approved and still hold the token's role; service tokens
        must be on record and not revoked."""
        if caller.role in SERVICE_ROLES:
            record = self.store.get_service_token(caller.token_id)
            if record is None or SERVICE_SUBJECT_PREFIX + record.name != caller.subject:
                raise Unauthenticated("service token is not on record at auth")
            if record.revoked_at is not None:
                raise Unauthenticated(f"service token for {record.name!r} has been revoked")
            return
        user = self.store.get_user(caller.subject)
        if user is None:
            raise Unauthenticated(f"user {caller.subject!r} no longer exists")
        if not user.approved:
            raise PermissionDenied(f"user {caller.subject!r} is not approved")
        if user.role != caller.role:
            raise Unauthenticated(f"token role {caller.role!r} no longer matches the user's role; log in again")

    def session(self, caller: Caller) -> Session:
        """What VerifySession returns; the interceptor has already run `check_session` on this caller."""
        if caller.role in SERVICE_ROLES:
            return Session(caller.subject, caller.role, True, caller.expires_at)
        user = self.store.get_user(caller.subject)
        if user is None:
            raise Unauthenticated(f"user {caller.subject!r} no longer exists")
        return Session(user.username, user.role, user.approved, caller.expires_at)

    # --- service principals -------------------------------------------------------------------------------
    def mint_service_token(self, name: str, ttl_seconds: int | None = None, role: str = "service") -> IssuedToken:
        """A long-lived token for an internal caller; recorded so it can be revoked and its key kept published.
        Role `service` for the outbox and internal callers, `reloader` for monitoring's ReloadModel-only credential."""
        validate_username(name, field="name")
        if role not in SERVICE_ROLES:
            raise InvalidInput("role", f"a service token's role is one of {', '.join(SERVICE_ROLES)}, not {role!r}")
        token = self._issuer.issue(SERVICE_SUBJECT_PREFIX + name, role, ttl_seconds or self._service_ttl)
        self.store.add_service_token(token.jti, name, token.kid, token.issued_at, token.expires_at)
        metrics.TOKENS_ISSUED.labels(role).inc()
        log.info("service token minted", extra={"fields": {"name": name, "jti": token.jti,
                                                          "expires_at": token.expires_at}})
        return token

    def revoke_service_tokens(self, name: str) -> int:
        validate_username(name, field="name")
        count = self.store.revoke_service_tokens(name)
        log.info("service tokens revoked", extra={"fields": {"name": name, "count": count}})
        return count

    # --- keys ---------------------------------------------------------------------------------------------
    def rotate_keys(self) -> KeyStatus:
        status = self.keys.rotate()
        metrics.KEY_ROTATIONS.inc()
        log.info("signing key rotation", extra={"fields": {"next_kid": status.next_kid,
                                                          "signs_from": status.next_signs_from}})
        return status
