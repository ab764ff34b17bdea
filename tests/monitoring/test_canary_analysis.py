"""The canary analysis as plain Python: divergences against scipy, the verdict's rules, and the figures of both
sides read from a real store and a fresh MLflow registry."""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from services.common import features as F
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.prediction_record import served_twin
from services.common.settings import Settings
from services.monitoring import canary_analysis as CA
from services.monitoring.store import MonitoringStore, PredictionRow, utcnow
from tests.monitoring.conftest import batch_of

T = CA.Thresholds(min_predictions=100, min_labelled=50, max_error_rate_increase=0.01, max_latency_p99_ms=50.0,
                  max_jensen_shannon=0.1, max_roc_auc_drop=0.02)
GOOD = CA.Side("staging", "3", 500, 0.0, 1.0, 5.0, 0.3, 200, 0.8, 0.84)
PROD = CA.Side("production", "1", 500, 0.0, 1.0, 5.0, 0.3, 200, 0.8, 0.85)


def test_divergences_match_scipy_and_psi_grows_with_the_shift():
    rng = np.random.default_rng(7)
    a, b = rng.beta(2, 5, 5000), rng.beta(5, 2, 5000)
    js, psi = CA.divergences(a, b)
    pa, pb = CA._distribution(a), CA._distribution(b)
    assert js == pytest.approx(jensenshannon(pa, pb, base=2) ** 2, rel=1e-9)
    same_js, same_psi = CA.divergences(a, rng.beta(2, 5, 5000))
    assert same_js < 0.01 < js and same_psi < 0.1 < psi
    assert CA.divergences(a, np.array([])) == (0.0, 0.0)


@pytest.mark.parametrize("staging, js, expected, needle", [
    (GOOD, 0.01, CA.PROMOTE, "ok: live ROC AUC 0.840"),
    (dataclasses.replace(GOOD, predictions=20), 0.01, CA.HOLD, "staging has 20 predictions"),
    (GOOD, 0.3, CA.HOLD, "Jensen-Shannon divergence 0.300"),
    (dataclasses.replace(GOOD, error_rate=None), 0.01, CA.HOLD, "error rate unknown"),
    (dataclasses.replace(GOOD, error_rate=0.05), 0.01, CA.ROLLBACK, "failed: error rate 5.00%"),
    (dataclasses.replace(GOOD, latency_p99_ms=80.0), 0.01, CA.ROLLBACK, "failed: p99 latency 80.0 ms"),
    (dataclasses.replace(GOOD, roc_auc=0.55), 0.3, CA.ROLLBACK, "failed: live ROC AUC 0.550"),
    (dataclasses.replace(GOOD, roc_auc=0.55, labelled=10), 0.01, CA.PROMOTE, "not judged"),
])
def test_verdict_rules(staging, js, expected, needle):
    verdict, reasons = CA.verdict(PROD, staging, js, T)
    assert verdict == expected and any(needle in r for r in reasons), reasons


def rows(alias: str, version: str, p: np.ndarray, start: int) -> list[PredictionRow]:
    now = utcnow()
    inputs = {f.name: None for f in F.FEATURES}
    return [PredictionRow(f"{alias}-{start + i}", f"c{start + i}", inputs, bool(v >= 0.5), float(v), "m", version,
                          alias, 2.0 + i % 10, now - dt.timedelta(seconds=i), "r") for i, v in enumerate(p)]


def analysis_world(settings: Settings, tmp_path):
    """A store, a registry of three empty versions with production on 1, and the analyzer over both."""
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    registry.client.create_registered_model(registry.name)
    for _ in range(3):
        registry.client.create_model_version(registry.name, source="file:///nowhere")
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
    return store, registry, CA.CanaryAnalyzer(store, registry, settings, error_rate=lambda alias: 0.0)


def test_both_sides_figures_from_the_log(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "analysis-test",
                                  "CANARY_MIN_PREDICTIONS": "100"})
    store, registry, analyzer = analysis_world(settings, tmp_path)
    with pytest.raises(FailedPrecondition, match="staging"):
        analyzer.analyze(0)
    registry.set_alias(R.ALIAS_STAGING, "3")
    with pytest.raises(InvalidInput) as bad:
        analyzer.analyze(-5)
    assert bad.value.field == "window_minutes"

    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    good = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.15, 300), 0, 1)
    noise = rng.random(300)  # a candidate that learnt nothing
    store.record_predictions(batch_of(rows("production", "1", good, 0) + rows("staging", "3", noise, 0)
                                      + rows("staging", "2", good, 1000)))  # an older staging version is not judged
    store.save_feedback({**{f"production-{i}": bool(v) for i, v in enumerate(y)},
                         **{f"staging-{i}": bool(v) for i, v in enumerate(y)}})
    analysis = analyzer.analyze(60)
    assert (analysis.production.predictions, analysis.staging.predictions) == (300, 300)
    assert analysis.production.labelled == 300
    assert analysis.production.roc_auc == pytest.approx(roc_auc_score(y, good))
    assert analysis.staging.accuracy == pytest.approx(np.mean((noise >= 0.5) == y))
    assert analysis.production.latency_p50_ms == pytest.approx(np.percentile(2.0 + np.arange(300) % 10, 50))
    reference = jensenshannon(CA._distribution(good), CA._distribution(noise), base=2) ** 2
    assert analysis.jensen_shannon == pytest.approx(reference) and analysis.psi > 0
    assert analysis.verdict == CA.ROLLBACK
    assert any(r.startswith("failed: live ROC AUC") for r in analysis.reasons)
    store.close()


def test_shadow_rows_are_judged_against_productions_answers_to_the_same_requests(tmp_path):
    """Staging's shadow rows pair with production's answers by request and row; the label the customer's answer
    got counts for both; staging's live rows, a shadow row without its twin and another production version's
    answers stay out."""
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "shadow-test",
                                  "CANARY_MIN_PREDICTIONS": "100", "CANARY_MIN_LABELLED": "50"})
    store, registry, analyzer = analysis_world(settings, tmp_path)
    registry.set_alias(R.ALIAS_STAGING, "3")

    rng = np.random.default_rng(5)
    n = 200
    y = rng.random(n) < 0.3
    served = np.clip(np.where(y, 0.7, 0.3) + rng.normal(0, 0.15, n), 0, 1)
    candidate = np.clip(np.where(y, 0.8, 0.2) + rng.normal(0, 0.1, n), 0, 1)
    now, inputs = utcnow(), {f.name: None for f in F.FEATURES}

    def row(prediction_id, request, customer, p, version, alias, latency, shadow=False):
        return PredictionRow(prediction_id, customer, inputs, bool(p >= 0.5), float(p), "m", version, alias, latency,
                             now, request, shadow)

    answers = [row(f"req{i}-{i % 2}", f"req{i}", f"c{i}", served[i], "1", "production", 2.0) for i in range(n)]
    shadows = [row(f"req{i}-shadow-{i % 2}", f"req{i}", f"c{i}", candidate[i], "3", "staging", 9.0, True)
               for i in range(n)]
    strays = [row("req-lost-shadow-0", "req-lost", "c-lost", 0.99, "3", "staging", 9.0, True),  # no twin logged
              row("live-0", "live", "c-live", 0.99, "3", "staging", 500.0),  # a live staging answer
              row("old-shadow-0", "old", "c-old", 0.99, "3", "staging", 9.0, True),
              row("old-0", "old", "c-old", 0.01, "2", "production", 2.0)]  # another production version's answer
    store.record_predictions(batch_of(answers + shadows + strays))
    assert served_twin("req7-shadow-1") == "req7-1" and served_twin("req7-1") is None
    # feedback by customer labels the answer the customer got, never its shadow copy
    matched = store.latest_prediction_for_customers(f"c{i}" for i in range(n))
    assert matched == {f"c{i}": f"req{i}-{i % 2}" for i in range(n)}
    store.save_feedback({matched[f"c{i}"]: bool(y[i]) for i in range(n)})

    analysis = analyzer.analyze(60)
    assert analysis.shadow is True
    assert (analysis.production.predictions, analysis.staging.predictions) == (n, n)
    assert analysis.staging.labelled == analysis.production.labelled == n
    assert analysis.staging.roc_auc == pytest.approx(roc_auc_score(y, candidate))
    assert analysis.production.roc_auc == pytest.approx(roc_auc_score(y, served))
    assert (analysis.staging.latency_p99_ms, analysis.production.latency_p50_ms) == (9.0, 2.0)
    reference = jensenshannon(CA._distribution(served), CA._distribution(candidate), base=2) ** 2
    assert analysis.jensen_shannon == pytest.approx(reference)

    later = analyzer.analyze_since(utcnow() + dt.timedelta(seconds=1))  # no shadow rows in the window: live mode
    assert later.shadow is False and later.staging.predictions == 0
    store.close()

