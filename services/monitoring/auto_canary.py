"""The automatic canary (CANARY_AUTO, off by default): progressive delivery in the manner of Flagger and Argo
Rollouts. When `staging` names a version production does not serve, the weight goes to the first step
(CANARY_AUTO_STEPS, default 10 → 25 → 50 → 100); every CANARY_AUTO_INTERVAL_SECONDS the canary analysis judges the
traffic since the step began: PROMOTE moves to the next step, HOLD waits (too few predictions, divergence), and
ROLLBACK sets the weight to 0 at once and leaves that version alone.

At the last step the analysis covers the whole rollout (at 100 % production serves no split traffic of its own to
compare with, but it did during the earlier steps). When that verdict is PROMOTE the candidate is promoted
(CANARY_AUTO_PROMOTE, on by default): `production` → the staging version, the old one kept as `previous`,
production reloaded with monitoring's own credential, weight 0 — Promote itself, as actor `monitoring:canary`.
With CANARY_AUTO_PROMOTE off the candidate keeps its last step's share until a human promotes it.

The rollout's position (version, step, when it and the step began, how it ended) lives in the lifecycle store, so a
restarted monitoring resumes where it was — re-asserting the step's weight once, in case it stopped between the two
writes — and a version that was rolled back, promoted or completed is left alone, even when a human's Rollback makes
it a candidate again. Every weight change and promote is a model event by `monitoring:canary` with the reasons.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from services.common import model_registry as R
from services.monitoring import canary_analysis as CA
from services.monitoring import lifecycle_store as LS
from services.monitoring.lifecycle import Actor, Lifecycle
from services.monitoring.store import utcnow

log = logging.getLogger("churn.monitoring.auto_canary")
ACTOR = Actor("monitoring:canary")  # no token: its reloads carry monitoring's own credential


class AutoCanary:
    def __init__(self, analyzer: CA.CanaryAnalyzer, registry: R.ModelRegistry, lifecycle: Lifecycle,
                 rollouts: LS.LifecycleStore, steps: tuple[int, ...], promote: bool = True,
                 now: Callable[[], dt.datetime] = utcnow):
        self._analyzer = analyzer
        self._registry = registry
        self._lifecycle = lifecycle
        self._rollouts = rollouts
        self._steps = steps
        self._promote_enabled = promote
        self._now = now
        self._applied: str | None = None  # the version whose step weight this process has set

    def _weight(self, percent: int, detail: str) -> None:
        self._lifecycle.set_weight(percent, ACTOR, detail=detail[:1000], record_unchanged=True)

    def tick(self) -> str | None:
        """One look; returns what it did (for logs and tests), None when nothing changed."""
        staging = self._registry.alias_or_none(R.ALIAS_STAGING)
        if staging is None:
            return None
        rollout = self._rollouts.rollout(staging)
        if staging == self._registry.alias_or_none(R.ALIAS_PRODUCTION):
            if rollout is not None and rollout.state == LS.ROLLOUT_RUNNING:  # a promote that did not finish its
                return self._promote(rollout, "production already names it")  # reload, or a human's mid-rollout
            return None
        if rollout is None or rollout.state == LS.ROLLOUT_SUPERSEDED:
            return self._start(staging)
        if rollout.state != LS.ROLLOUT_RUNNING:
            return None  # rolled back, promoted or complete: left alone
        if self._applied != staging:  # resumed after a restart
            self._applied = staging
            self._lifecycle.set_weight(self._steps[rollout.step], ACTOR,
                                       detail=f"auto canary: version {staging} resumes at {self._steps[rollout.step]}%")
        return self._judge(rollout)

    def _start(self, version: str) -> str:
        first = self._steps[0]
        self._weight(first, f"auto canary: version {version} starts at {first}%")
        self._rollouts.start_rollout(version, self._now())
        self._applied = version
        return f"started version {version} at {first}%"

    def _judge(self, rollout: LS.Rollout) -> str | None:
        version, last = rollout.model_version, rollout.step + 1 == len(self._steps)
        analysis = self._analyzer.analyze_since(rollout.started_at if last else rollout.step_since)
        why = "; ".join(analysis.reasons)
        if analysis.verdict == CA.ROLLBACK:
            self._weight(0, f"auto canary: version {version} rolled back: {why}")
            self._rollouts.update_rollout(version, state=LS.ROLLOUT_ROLLED_BACK)
            log.warning("auto canary rolled back version %s: %s", version, why)
            return f"rolled back version {version}"
        if analysis.verdict == CA.HOLD:
            return None
        if last and self._promote_enabled:
            return self._promote(rollout, why)
        if last:
            self._rollouts.update_rollout(version, state=LS.ROLLOUT_COMPLETE)
            return f"version {version} holds at {self._steps[-1]}%"
        following = self._steps[rollout.step + 1]
        self._weight(following, f"auto canary: version {version} to {following}%: {why}")
        self._rollouts.update_rollout(version, step=rollout.step + 1, step_since=self._now())
        return f"version {version} at {following}%"

    def _promote(self, rollout: LS.Rollout, why: str) -> str:
        """Promote as `monitoring:canary`; the rollout ends only once Promote finished (a failed reload is
        retried at the next tick: Promote is idempotent)."""
        version = rollout.model_version
        change = self._lifecycle.promote(version, ACTOR, reason=f"auto canary: {why}")
        self._rollouts.update_rollout(version, state=LS.ROLLOUT_PROMOTED)
        log.warning("auto canary promoted version %s (previous %s)", version, change.other_version or "none")
        return f"promoted version {version}"
