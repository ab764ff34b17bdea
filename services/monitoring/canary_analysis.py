"""AnalyzeCanary: the candidate (`staging`) judged against `production` on the prediction log, the way Flagger
judges a canary — a few checks with thresholds from settings, and a verdict.

Each side is its alias's CURRENT version, over the last `window_minutes` of logged predictions. Which records:
- **Shadow** (`shadow` true in the answer): when the window holds shadow predictions of the staging version — the
  copies of production's requests Envoy mirrors to staging (SetShadowPercent) — staging is judged on those and
  production on its answers to the SAME requests and rows (each shadow row paired with its served twin; a shadow row
  whose twin is not logged yet is left out). Both sides saw the same customers, so the divergence measures the
  models, not the traffic mix, and the label a customer's answer received (feedback) counts for both — a candidate
  is judged, accuracy included, before any caller sees it. Staging's live rows in that window are not used.
- **Live**: otherwise, each side's served predictions (the requests the weighted split sent it).
Latency is the logged per-prediction time; the divergence is between the two P(churn) histograms (10 equal bins on
[0, 1], smoothed); accuracy and ROC AUC use the predictions that have a feedback label. The error rate is not in
the log (a failed call logs nothing): it is read from each instance's own `churn_grpc_requests_total` on its
metrics port (live and shadow calls), since that instance started.

Verdict: ROLLBACK when a hard check fails (error rate above production's + the allowed increase, p99 latency above
the maximum, live ROC AUC below production's − the allowed drop); otherwise HOLD while either side has too few
predictions or the distributions diverge beyond the maximum (a human should look); otherwise PROMOTE.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import urllib.request
from typing import Callable

import numpy as np
import pandas as pd

from services.common import model_registry as R
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.settings import Settings
from services.monitoring.store import MonitoringStore, utcnow

PROMOTE, HOLD, ROLLBACK = "promote", "hold", "rollback"
MAX_WINDOW_MINUTES = 7 * 24 * 60
BINS = np.linspace(0.0, 1.0, 11)
SMOOTHING = 1e-4  # per bin, so an empty bin does not make PSI infinite
PREDICTION_METHODS = ("Predict", "PredictBatch", "PredictCsv", "StreamPredict")
SERVER_ERRORS = ("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN", "DATA_LOSS")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    min_predictions: int
    min_labelled: int
    max_error_rate_increase: float
    max_latency_p99_ms: float
    max_jensen_shannon: float
    max_roc_auc_drop: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "Thresholds":
        return cls(settings.canary_min_predictions, settings.canary_min_labelled,
                   settings.canary_max_error_rate_increase, settings.canary_max_latency_p99_ms,
                   settings.canary_max_jensen_shannon, settings.canary_max_roc_auc_drop)


@dataclasses.dataclass(frozen=True)
class Side:
    alias: str
    version: str
    predictions: int
    error_rate: float | None
    latency_p50_ms: float
    latency_p99_ms: float
    mean_probability: float
    labelled: int
    accuracy: float | None
    roc_auc: float | None


@dataclasses.dataclass(frozen=True)
class Analysis:
    production: Side
    staging: Side
    jensen_shannon: float
    psi: float
    verdict: str
    reasons: list[str]
    thresholds: Thresholds
    window_start: dt.datetime
    shadow: bool = False  # staging judged on its shadow predictions against production's answers to them


def _distribution(p: np.ndarray) -> np.ndarray:
    counts = np.histogram(np.clip(p, 0.0, 1.0), bins=BINS)[0] + SMOOTHING
    return counts / counts.sum()


def divergences(production: np.ndarray, staging: np.ndarray) -> tuple[float, float]:
    """(Jensen-Shannon divergence in bits, PSI of staging against production); 0 when a side has no data."""
    if len(production) == 0 or len(staging) == 0:
        return 0.0, 0.0
    p, q = _distribution(production), _distribution(staging)
    m = (p + q) / 2
    js = 0.5 * float(np.sum(p * np.log2(p / m))) + 0.5 * float(np.sum(q * np.log2(q / m)))
    psi = float(np.sum((q - p) * np.log(q / p)))
    return js, psi


def instance_error_rate(settings: Settings) -> Callable[[str], float | None]:
    """Server errors / prediction calls from an alias's instance metrics, or None when they cannot be read."""
    from prometheus_client.parser import text_string_to_metric_families

    def read(alias: str) -> float | None:
        port = settings.inference_http_port(alias)
        if not port:
            return None
        try:
            with urllib.request.urlopen(f"http://{settings.inference_host(alias)}:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except (OSError, ValueError):
            return None
        calls = errors = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "churn_grpc_requests_total" and sample.labels.get("method") in PREDICTION_METHODS:
                    calls += sample.value
                    errors += sample.value if sample.labels.get("code") in SERVER_ERRORS else 0.0
        return errors / calls if calls else None

    return read


def side(alias: str, version: str, scores: pd.DataFrame, error_rate: float | None) -> Side:
    from sklearn import metrics

    p = scores["probability"].to_numpy(dtype=float)
    latency = scores["latency_ms"].to_numpy(dtype=float)
    known = scores.dropna(subset=["actual_churn"])
    y, p_known = known["actual_churn"].astype(bool).to_numpy(), known["probability"].to_numpy(dtype=float)
    accuracy = float(np.mean((p_known >= 0.5) == y)) if len(known) else None
    auc = float(metrics.roc_auc_score(y, p_known)) if len(set(y.tolist())) == 2 else None
    return Side(alias, version, len(scores), error_rate,
                float(np.percentile(latency, 50)) if len(latency) else 0.0,
                float(np.percentile(latency, 99)) if len(latency) else 0.0,
                float(p.mean()) if len(p) else 0.0, len(known), accuracy, auc)


def verdict(production: Side, staging: Side, js: float, t: Thresholds) -> tuple[str, list[str]]:
    failed, held, passed = [], [], []
    if staging.error_rate is not None and production.error_rate is not None:
        limit = production.error_rate + t.max_error_rate_increase
        (failed if staging.error_rate > limit else passed).append(
            f"error rate {staging.error_rate:.2%} vs limit {limit:.2%} (production {production.error_rate:.2%})")
    else:
        held.append("error rate unknown: an instance's metrics port could not be read")
    if staging.predictions:
        (failed if staging.latency_p99_ms > t.max_latency_p99_ms else passed).append(
            f"p99 latency {staging.latency_p99_ms:.1f} ms vs max {t.max_latency_p99_ms:.1f} ms")
    if min(staging.labelled, production.labelled) >= t.min_labelled and None not in (staging.roc_auc,
                                                                                     production.roc_auc):
        floor = production.roc_auc - t.max_roc_auc_drop
        (failed if staging.roc_auc < floor else passed).append(
            f"live ROC AUC {staging.roc_auc:.3f} vs floor {floor:.3f} (production {production.roc_auc:.3f})")
    else:
        passed.append(f"live ROC AUC not judged: fewer than {t.min_labelled} labelled predictions on a side")
    for s in (production, staging):
        if s.predictions < t.min_predictions:
            held.append(f"{s.alias} has {s.predictions} predictions in the window, fewer than {t.min_predictions}")
    (held if js > t.max_jensen_shannon else passed).append(
        f"Jensen-Shannon divergence {js:.3f} vs max {t.max_jensen_shannon:.3f}")
    if failed:
        return ROLLBACK, [f"failed: {r}" for r in failed] + [f"ok: {r}" for r in passed]
    if held:
        return HOLD, [f"hold: {r}" for r in held] + [f"ok: {r}" for r in passed]
    return PROMOTE, [f"ok: {r}" for r in passed]


class CanaryAnalyzer:
    def __init__(self, store: MonitoringStore, registry: R.ModelRegistry, settings: Settings,
                 error_rate: Callable[[str], float | None]):
        self._store = store
        self._registry = registry
        self._settings = settings
        self._error_rate = error_rate

    def analyze(self, window_minutes: int) -> Analysis:
        if not 0 <= window_minutes <= MAX_WINDOW_MINUTES:
            raise InvalidInput("window_minutes", f"must be between 1 and {MAX_WINDOW_MINUTES} (0 = "
                                                 f"{self._settings.canary_window_minutes}), got {window_minutes}")
        return self.analyze_since(utcnow() - dt.timedelta(minutes=window_minutes or
                                                          self._settings.canary_window_minutes))

    def _scores(self, versions: dict[str, str], since: dt.datetime) -> tuple[dict[str, pd.DataFrame], bool]:
        """Each side's records (see the module docstring): shadow pairs when the window has any, else live rows."""
        pairs = self._store.shadow_pairs_since(versions[R.ALIAS_STAGING], versions[R.ALIAS_PRODUCTION], since)
        if len(pairs):
            return {alias: pd.DataFrame({"probability": pairs[f"{alias}_probability"],
                                         "latency_ms": pairs[f"{alias}_latency_ms"],
                                         "actual_churn": pairs["actual_churn"]})
                    for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING)}, True
        return {alias: self._store.scores_since(alias, version, since) for alias, version in versions.items()}, False

    def analyze_since(self, since: dt.datetime) -> Analysis:
        versions = {}
        for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING):
            versions[alias] = self._registry.alias_or_none(alias)
            if versions[alias] is None:
                raise FailedPrecondition(f"no version of {self._registry.name!r} has the alias {alias}")
        scores, shadow = self._scores(versions, since)
        sides = {alias: side(alias, version, scores[alias], self._error_rate(alias))
                 for alias, version in versions.items()}
        js, psi = divergences(*(scores[a]["probability"].to_numpy(dtype=float)
                                for a in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING)))
        thresholds = Thresholds.from_settings(self._settings)
        production, staging = sides[R.ALIAS_PRODUCTION], sides[R.ALIAS_STAGING]
        decision, reasons = verdict(production, staging, js, thresholds)
        return Analysis(production, staging, js, psi, decision, reasons, thresholds, since, shadow)
