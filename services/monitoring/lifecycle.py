"""Promote, Rollback, canary-weight and shadow-percent changes, each recorded as a model event with the caller who
did it.

Promote points `production` at the staging version and keeps the old production as `previous`; Rollback points
`production` back at `previous`. Both are idempotent: when the aliases already say what was asked, nothing moves
and no event is written — but the production instance is still told to reload and the weight is still set to 0,
so repeating a call whose reload failed finishes the job. The aliases move before the reload: the registry is the
desired state, and an instance that missed the reload picks it up on its next reload or restart.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Callable

from services.common import model_registry as R
from services.common.errors import FailedPrecondition, InvalidInput
from services.monitoring import lifecycle_store as LS

# (alias, the acting admin's token or "" for monitoring's own credential) -> the version that instance serves now
Reload = Callable[[str, str], str]


@dataclasses.dataclass(frozen=True)
class Actor:
    """Who acts: a verified caller (its subject and the token that lets monitoring act for it), or monitoring itself
    (a `monitoring:*` subject and no token: its reloads carry monitoring's own credential)."""

    subject: str
    token: str = dataclasses.field(repr=False, default="")


@dataclasses.dataclass(frozen=True)
class AliasChange:
    production_version: str
    other_version: str  # Promote: the version now `previous`; Rollback: the version rolled back from
    changed: bool
    canary_percent: int


class Lifecycle:
    def __init__(self, registry: R.ModelRegistry, events: LS.LifecycleStore, reload: Reload,
                 set_weight: Callable[[int], tuple[int, int]],
                 set_shadow: Callable[[int], tuple[int, int]] | None = None):
        self._registry = registry
        self._events = events
        self._reload = reload
        self._set_weight = set_weight
        self._set_shadow = set_shadow
        self._lock = threading.Lock()  # one alias change at a time in this process

    def set_weight(self, percent: int, actor: Actor, detail: str = "", record_unchanged: bool = False
                   ) -> tuple[int, int]:
        """The canary weight, recorded when it changes (or always, for a decision worth seeing even when the weight
        already had that value: the automatic canary starting a new version at a step the last one held)."""
        percent, previous = self._set_weight(percent)
        if percent != previous or record_unchanged:
            self._events.add_event(LS.CANARY_WEIGHT, actor.subject, canary_percent=percent,
                                   detail=detail or f"staging share {previous}% -> {percent}%")
        return percent, previous

    def set_shadow(self, percent: int, actor: Actor) -> tuple[int, int]:
        """The shadow percent (the share of production's requests mirrored to staging), recorded when it changes."""
        if self._set_shadow is None:
            raise FailedPrecondition("this monitoring instance does not control the shadow percent")
        percent, previous = self._set_shadow(percent)
        if percent != previous:
            self._events.add_event(LS.SHADOW_PERCENT, actor.subject, shadow_percent=percent,
                                   detail=f"shadow share {previous}% -> {percent}%")
        return percent, previous

    def _settle(self, actor: Actor) -> int:
        self._reload(R.ALIAS_PRODUCTION, actor.token)
        return self.set_weight(0, actor)[0]

    def promote(self, expected: str, actor: Actor, reason: str = "") -> AliasChange:
        """`reason` (the automatic canary's analysis) goes into the PROMOTE event's detail."""
        if expected and not expected.isdigit():
            raise InvalidInput("version", "must be a model version number (or empty for the staging version)")
        with self._lock:
            staging = self._registry.alias_or_none(R.ALIAS_STAGING)
            if staging is None:
                raise FailedPrecondition(f"no version of {self._registry.name!r} has the alias staging: Retrain "
                                         "first")
            if expected and expected != staging:
                raise FailedPrecondition(f"staging is version {staging}, not {expected}: nothing was promoted")
            production = self._registry.alias_or_none(R.ALIAS_PRODUCTION)
            changed = production != staging
            if changed:
                if production is not None:
                    self._registry.set_alias(R.ALIAS_PREVIOUS, production)
                self._registry.set_alias(R.ALIAS_PRODUCTION, staging)
                self._events.add_event(LS.PROMOTE, actor.subject, model_version=staging,
                                       previous_version=production or "",
                                       detail=f"production {production or 'none'} -> {staging}"
                                              + (f"; {reason}" if reason else "")[:900])
            previous = self._registry.alias_or_none(R.ALIAS_PREVIOUS) or ""
            return AliasChange(staging, previous, changed, self._settle(actor))

    def rollback(self, actor: Actor) -> AliasChange:
        with self._lock:
            previous = self._registry.alias_or_none(R.ALIAS_PREVIOUS)
            if previous is None:
                raise FailedPrecondition(f"no version of {self._registry.name!r} has the alias previous: nothing "
                                         "was ever promoted, so there is nothing to roll back to")
            production = self._registry.alias_or_none(R.ALIAS_PRODUCTION)
            changed = production != previous
            if changed:
                self._registry.set_alias(R.ALIAS_PRODUCTION, previous)
                self._events.add_event(LS.ROLLBACK, actor.subject, model_version=previous,
                                       previous_version=production or "",
                                       detail=f"production {production or 'none'} -> {previous}")
            return AliasChange(previous, (production or "") if changed else "", changed, self._settle(actor))
