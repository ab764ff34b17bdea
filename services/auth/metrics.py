"""Auth's own metrics (prefix `churn_auth_`); RPC counts and latency come from services/common/metrics.py.

Labels are outcomes and roles only — never a username, password or token.
"""
from __future__ import annotations

from typing import Callable

from prometheus_client import Counter, Gauge

LOGINS = Counter("churn_auth_logins_total", "Login attempts by outcome.", ["outcome"])
LOGIN_OUTCOMES = ("ok", "bad_credentials", "unapproved", "invalid")

REGISTRATIONS = Counter("churn_auth_registrations_total", "Registration attempts by outcome.", ["outcome"])
REGISTRATION_OUTCOMES = ("created", "duplicate", "invalid", "denied")

TOKENS_ISSUED = Counter("churn_auth_tokens_issued_total", "Tokens signed, by role.", ["role"])
KEY_ROTATIONS = Counter("churn_auth_key_rotations_total", "Signing-key rotations started by this process.")

ACTIVE_USERS = Gauge("churn_auth_active_users", "Approved users in the store (read at scrape time).")
PENDING_USERS = Gauge("churn_auth_pending_users", "Users waiting for approval (read at scrape time).")
PUBLISHED_KEYS = Gauge("churn_auth_published_keys", "Keys in the JWKS now (signer, next and retiring).")

for _outcome in LOGIN_OUTCOMES:
    LOGINS.labels(_outcome)
for _outcome in REGISTRATION_OUTCOMES:
    REGISTRATIONS.labels(_outcome)


def bind_gauges(active: Callable[[], int], pending: Callable[[], int], published: Callable[[], int]) -> None:
    """Gauges read the shared store when scraped, so every replica reports the same numbers."""
    ACTIVE_USERS.set_function(_safe(active))
    PENDING_USERS.set_function(_safe(pending))
    PUBLISHED_KEYS.set_function(_safe(published))


def _safe(read: Callable[[], int]) -> Callable[[], float]:
    """A store that is briefly unreachable must not break the whole /metrics page: report NaN instead."""
    def value() -> float:
        try:
            return float(read())
        except Exception:  # noqa: BLE001 - any store error; the RPC metrics show the outage
            return float("nan")
    return value
