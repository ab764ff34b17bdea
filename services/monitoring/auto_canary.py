"""The automatic canary (CANARY_AUTO, off by default): progressive delivery in the manner of Flagger and Argo
Rollouts. When `staging` names a version production does not serve, the weight goes to the first step
(CANARY_AUTO_STEPS, default 10 → 25 → 50 → 100); every CANARY_AUTO_INTERVAL_SECONDS the canary analysis judges the
traffic since the step began: PROMOTE moves to the next step, HOLD waits (too few predictions, divergence), and
ROLLBACK sets the weight to 0 at once and leaves that version alone. At the last step the candidate serves its
full share and the run is complete; moving the `production` alias stays Promote's (it reloads production with an
admin's token, which monitoring does not hold).

The rollout's position lives in memory: a restarted monitoring starts the staging version again at the first step,
which only ever lowers its share. Every weight change is a model event by `monitoring:canary` with the reasons.
"""
from __future__ import annotations

import datetime as dt
import logging
from typing import Callable

from services.common import model_registry as R
from services.monitoring import canary_analysis as CA
from services.monitoring.lifecycle import Actor, Lifecycle
from services.monitoring.store import utcnow

log = logging.getLogger("churn.monitoring.auto_canary")
ACTOR = Actor("monitoring:canary")


class AutoCanary:
    def __init__(self, analyzer: CA.CanaryAnalyzer, registry: R.ModelRegistry, lifecycle: Lifecycle,
                 steps: tuple[int, ...], now: Callable[[], dt.datetime] = utcnow):
        self._analyzer = analyzer
        self._registry = registry
        self._lifecycle = lifecycle
        self._steps = steps
        self._now = now
        self.version: str | None = None
        self.step = 0
        self.finished = False
        self._since = now()

    def _weight(self, percent: int, detail: str) -> None:
        self._lifecycle.set_weight(percent, ACTOR, detail=detail[:1000], record_unchanged=True)
        self._since = self._now()

    def tick(self) -> str | None:
        """One look; returns what it did (for logs and tests), None when nothing changed."""
        staging = self._registry.alias_or_none(R.ALIAS_STAGING)
        if staging is None or staging == self._registry.alias_or_none(R.ALIAS_PRODUCTION):
            self.version = None
            return None
        if staging != self.version:
            self._weight(self._steps[0], f"auto canary: version {staging} starts at {self._steps[0]}%")
            self.version, self.step, self.finished = staging, 0, False
            return f"started version {staging} at {self._steps[0]}%"
        if self.finished:
            return None
        analysis = self._analyzer.analyze_since(self._since)
        why = "; ".join(analysis.reasons)
        if analysis.verdict == CA.ROLLBACK:
            self._weight(0, f"auto canary: version {staging} rolled back: {why}")
            self.finished = True
            log.warning("auto canary rolled back version %s: %s", staging, why)
            return f"rolled back version {staging}"
        if analysis.verdict == CA.HOLD:
            return None
        if self.step + 1 == len(self._steps):
            self.finished = True
            return f"version {staging} holds at {self._steps[-1]}%"
        following = self._steps[self.step + 1]
        self._weight(following, f"auto canary: version {staging} to {following}%: {why}")
        self.step += 1
        return f"version {staging} at {following}%"
