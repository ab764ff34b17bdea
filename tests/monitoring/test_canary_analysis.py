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


def test_both_sides_figures_from_the_log(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "analysis-test",
                                  "CANARY_MIN_PREDICTIONS": "100"})
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    analyzer = CA.CanaryAnalyzer(store, registry, settings, error_rate=lambda alias: 0.0)
    registry.client.create_registered_model(registry.name)
    for _ in range(3):
        registry.client.create_model_version(registry.name, source="file:///nowhere")
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
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


def test_auto_canary_steps_a_good_candidate_to_100_and_rolls_a_bad_one_back_at_once(tmp_path):
    from services.monitoring import lifecycle_store as LS
    from services.monitoring.auto_canary import AutoCanary
    from services.monitoring.lifecycle import Lifecycle

    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "auto-test",
                                  "CANARY_MIN_PREDICTIONS": "50", "CANARY_MIN_LABELLED": "50"})
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    events = LS.LifecycleStore(store.engine)
    weights = [0]

    def set_weight(percent):
        weights.append(percent)
        return percent, weights[-2]

    lifecycle = Lifecycle(registry, events, reload=lambda alias, token: "", set_weight=set_weight)
    auto = AutoCanary(CA.CanaryAnalyzer(store, registry, settings, error_rate=lambda alias: 0.0), registry, lifecycle,
                      steps=(10, 50, 100))
    registry.client.create_registered_model(registry.name)
    for _ in range(3):
        registry.client.create_model_version(registry.name, source="file:///nowhere")
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
    registry.set_alias(R.ALIAS_STAGING, "1")
    assert auto.tick() is None and weights == [0]  # staging = production: nothing to roll out

    rng = np.random.default_rng(3)
    counter = iter(range(10**6))

    def traffic(version: str, good: bool) -> None:
        """60 labelled predictions per side, made after the step began."""
        y = rng.random(60) < 0.3
        skilled = np.clip(np.where(y, 0.75, 0.25) + rng.normal(0, 0.1, 60), 0, 1)
        batch = {"production": ("1", skilled), "staging": (version, skilled if good else rng.random(60))}
        records, labels = [], {}
        for alias, (v, p) in batch.items():
            for value, label in zip(p, y):
                pid = f"{alias}-{next(counter)}"
                records.append(PredictionRow(pid, pid, {f.name: None for f in F.FEATURES}, bool(value >= 0.5),
                                             float(value), "m", v, alias, 3.0, utcnow(), "r"))
                labels[pid] = bool(label)
        store.record_predictions(batch_of(records))
        store.save_feedback(labels)

    registry.set_alias(R.ALIAS_STAGING, "2")
    assert auto.tick() == "started version 2 at 10%"
    assert auto.tick() is None  # no traffic in this step yet: HOLD
    for expected in ("version 2 at 50%", "version 2 at 100%", "version 2 holds at 100%"):
        traffic("2", good=True)
        assert auto.tick() == expected
    assert auto.tick() is None and weights == [0, 10, 50, 100]

    registry.set_alias(R.ALIAS_STAGING, "3")  # a candidate that learnt nothing
    assert auto.tick() == "started version 3 at 10%"
    traffic("3", good=False)
    assert auto.tick() == "rolled back version 3"
    assert weights[-1] == 0 and auto.tick() is None and weights[-1] == 0
    last = events.events(1)[0]
    assert last.actor == "monitoring:canary" and last.canary_percent == 0 and "failed: live ROC AUC" in last.detail

    weights.append(10)  # the weight already at the first step (the last rollout held there): the start is news
    registry.set_alias(R.ALIAS_STAGING, "2")
    assert auto.tick() == "started version 2 at 10%"
    started = events.events(1)[0]
    assert (started.canary_percent, started.detail) == (10, "auto canary: version 2 starts at 10%")
    store.close()


def test_auto_canary_settings(tmp_path):
    base = {"DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).canary_auto is False
    tuned = Settings.from_env(dict(base, CANARY_AUTO="true", CANARY_AUTO_STEPS="5, 20,100"))
    assert tuned.canary_auto and tuned.canary_auto_steps == (5, 20, 100)
    for raw in ("50,10", "0,10", "10,10", "ten", "10,101"):
        with pytest.raises(ValueError, match="CANARY_AUTO_STEPS"):
            Settings.from_env(dict(base, CANARY_AUTO_STEPS=raw))
