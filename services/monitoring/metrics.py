"""Monitoring's Prometheus metrics (prefix `churn_monitoring_`) and the update that recomputes them.

Counts and quality come from the store (shared by every replica), so they are gauges set from the database on
each update, not counters that each replica would count separately. Quality per model version uses the labelled
predictions (feedback); drift uses the version's training reference and its last `DEFAULT_WINDOW` inputs.
"""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
from prometheus_client import Counter, Gauge
from sklearn import metrics as skm

from services.common.errors import DomainError
from services.monitoring.drift import DEFAULT_WINDOW, DriftAnalyzer, DriftResult
from services.monitoring.store import LabelledRow, MonitoringStore

VERSION = ["model_name", "model_version"]
PREDICTIONS = Gauge("churn_monitoring_predictions", "Predictions in the log.", [*VERSION, "model_alias"])
LABELLED = Gauge("churn_monitoring_labelled_predictions", "Logged predictions with a true label (feedback).", VERSION)
QUALITY = {name: Gauge(f"churn_monitoring_{name}", f"{doc} of the predictions against feedback labels.", VERSION)
           for name, doc in (("accuracy", "Accuracy"), ("precision", "Precision (churn = positive)"),
                             ("recall", "Recall (churn = positive)"), ("f1", "F1 (churn = positive)"),
                             ("roc_auc", "ROC AUC of the probabilities"))}
DRIFT_SHARE = Gauge("churn_monitoring_drift_share", "Share of feature columns Evidently finds drifted.", VERSION)
DRIFTED_COLUMNS = Gauge("churn_monitoring_drifted_columns", "Feature columns Evidently finds drifted.", VERSION)
DATASET_DRIFT = Gauge("churn_monitoring_dataset_drift", "1 when Evidently reports dataset drift.", VERSION)
CANARY_PERCENT = Gauge("churn_monitoring_canary_percent", "Share of prediction traffic Envoy sends to staging.")
SHADOW_PERCENT = Gauge("churn_monitoring_shadow_percent", "Share of production's requests Envoy mirrors to staging.")
RECORDS = Counter("churn_monitoring_records_total", "Prediction records received, by outcome.", ["outcome"])
DEAD_LETTERS = Counter("churn_monitoring_dead_letters_total",
                       "Prediction records refused into the dead-letter table, by the field that broke a rule.",
                       ["field"])
LAST_UPDATE = Gauge("churn_monitoring_metrics_updated_timestamp_seconds", "When the gauges were last recomputed.")
UPDATE_SECONDS = Gauge("churn_monitoring_metrics_update_seconds", "How long the last recomputation took.")


@dataclasses.dataclass(frozen=True)
class VersionMetrics:
    model_name: str
    model_version: str
    predictions: int
    labelled: int
    metrics: dict[str, float]
    drift: DriftResult | None


def quality(rows: list[LabelledRow]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (and ROC AUC when both classes are present) of predictions vs labels."""
    if not rows:
        return {}
    actual = np.array([r.actual_churn for r in rows], dtype=bool)
    predicted = np.array([r.churn for r in rows], dtype=bool)
    result = {
        "accuracy": float(skm.accuracy_score(actual, predicted)),
        "precision": float(skm.precision_score(actual, predicted, zero_division=0)),
        "recall": float(skm.recall_score(actual, predicted, zero_division=0)),
        "f1": float(skm.f1_score(actual, predicted, zero_division=0)),
    }
    if actual.any() and not actual.all():
        result["roc_auc"] = float(skm.roc_auc_score(actual, [r.probability for r in rows]))
    return result


class MetricsUpdater:
    def __init__(self, store: MonitoringStore, drift: DriftAnalyzer | None, log: logging.Logger | None = None):
        self._store = store
        self._drift = drift
        self._log = log or logging.getLogger("churn.monitoring.metrics")

    def live_metrics(self, model_version: str) -> dict[str, float]:
        return quality(self._store.labelled(None, model_version))

    def update(self) -> list[VersionMetrics]:
        started = time.perf_counter()
        counts = self._store.prediction_counts()
        for (name, version, alias), count in counts.items():
            PREDICTIONS.labels(name, version, alias).set(count)
        names: dict[str, str] = {}
        for name, version, _alias in counts:
            names.setdefault(version, name)
        results = []
        for version, name in sorted(names.items(), key=lambda item: (len(item[0]), item[0])):
            rows = self._store.labelled(None, version)
            values = quality(rows)
            LABELLED.labels(name, version).set(len(rows))
            for metric, gauge in QUALITY.items():
                if metric in values:
                    gauge.labels(name, version).set(values[metric])
            drift = self._drift_for(version)
            if drift is not None:
                DRIFT_SHARE.labels(name, version).set(drift.drift_share)
                DRIFTED_COLUMNS.labels(name, version).set(drift.drifted_columns)
                DATASET_DRIFT.labels(name, version).set(int(drift.dataset_drift))
            results.append(VersionMetrics(name, version, sum(c for (_, v, _), c in counts.items() if v == version),
                                          len(rows), values, drift))
        LAST_UPDATE.set_to_current_time()
        UPDATE_SECONDS.set(time.perf_counter() - started)
        return results

    def _drift_for(self, version: str) -> DriftResult | None:
        """Drift of the version's last window against its training data; None (logged) when it cannot run yet
        (too few rows, version no longer registered, registry down): the other gauges still update."""
        if self._drift is None:
            return None
        try:
            return self._drift.run(DEFAULT_WINDOW, "json", model_version=version, render=False)
        except DomainError as exc:
            self._log.info("no drift for model version %s: %s", version, exc.message)
            return None
