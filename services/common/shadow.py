"""Shadow calls: copies of production's requests that Envoy mirrors to the staging instance (the shadow percent,
set by monitoring's SetShadowPercent). Their answers go nowhere — Envoy discards a mirror's reply — but the staging
instance logs them, marked, so the canary analysis judges a candidate before any caller sees it.

Envoy marks the copy two ways: it appends `-shadow` to the :authority (its own rule, which gRPC Python servers
cannot read) and the mirror policy adds SHADOW_HEADER, which the gateway strips from every request it receives, so
only Envoy's copy carries it. This module is the one place a call is told to be a shadow: the shared interceptor
calls `detect` once per call, and everything else (the prediction log, metric labels) reads `is_shadow()`.
"""
from __future__ import annotations

import contextvars
from typing import Mapping

SHADOW_HEADER = "x-churn-shadow"
SHADOW_VALUE = "1"
LIVE, SHADOW = "live", "shadow"  # the `traffic` label of the RPC and prediction metrics

_shadow_var: contextvars.ContextVar[bool] = contextvars.ContextVar("shadow", default=False)


def detect(metadata: Mapping[str, str], through_gateway: bool) -> contextvars.Token:
    """Mark the current call: a shadow only when Envoy forwarded it (the gateway secret) and marked it."""
    return _shadow_var.set(through_gateway and metadata.get(SHADOW_HEADER) == SHADOW_VALUE)


def reset(token: contextvars.Token) -> None:
    _shadow_var.reset(token)


def is_shadow() -> bool:
    return _shadow_var.get()


def traffic() -> str:
    return SHADOW if _shadow_var.get() else LIVE
