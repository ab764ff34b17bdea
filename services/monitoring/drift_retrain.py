"""Drift → retrain: monitoring starts a Retrain itself when the production version's drift share stays at or above
DRIFT_RETRAIN_SHARE for DRIFT_RETRAIN_AFTER consecutive scheduled metric updates (off while the share is 0).

The candidate trains on the shipped data plus every feedback-labelled prediction (the inputs that drifted, with
their true labels) and becomes `staging` (the staging instance reloads with monitoring's own credential); promoting
it stays a human's (or the automatic canary's) decision. The events name the actor `monitoring:drift`.
The streak is kept in memory: a restart of monitoring starts counting again.
"""
from __future__ import annotations

import logging

from services.common import model_registry as R
from services.common.errors import FailedPrecondition
from services.monitoring.lifecycle import Actor
from services.monitoring.metrics import VersionMetrics
from services.monitoring.retrain import RetrainSpec, Trainer
from services.monitoring.store import MonitoringStore

log = logging.getLogger("churn.monitoring.drift_retrain")
ACTOR = Actor("monitoring:drift")


class DriftRetrain:
    def __init__(self, trainer: Trainer, registry: R.ModelRegistry, store: MonitoringStore, share: float,
                 after: int):
        self._trainer = trainer
        self._registry = registry
        self._store = store
        self._share = share
        self._after = max(after, 1)
        self.streak = 0

    def observe(self, results: list[VersionMetrics]) -> str | None:
        """Called after each scheduled metrics update; returns the run id when it started a Retrain."""
        if self._share <= 0:
            return None
        production = self._registry.alias_or_none(R.ALIAS_PRODUCTION)
        drift = next((r.drift for r in results if r.model_version == production and r.drift is not None), None)
        if drift is None or drift.drift_share < self._share:
            self.streak = 0
            return None
        self.streak += 1
        if self.streak < self._after:
            return None
        self.streak = 0
        spec = RetrainSpec(include_shipped_data=True, dataset_ids=[], flavor="xgboost",
                           include_feedback=bool(self._store.labelled(limit=1)))
        try:
            run = self._trainer.start(spec, ACTOR)
        except FailedPrecondition as exc:  # a run is already going
            log.info("drift persists but no retrain was started: %s", exc.message)
            return None
        log.warning("drift share %.2f of production version %s for %d updates: started training run %s",
                    drift.drift_share, production, self._after, run.run_id)
        return run.run_id
