"""The model lifecycle as plain Python: Promote / Rollback on a real (fresh) MLflow registry, the audit trail,
Retrain's input checks, and one real training child that outlives the monitoring that started it."""
from __future__ import annotations

import json
import time

import pytest

from services.common import model_registry as R
from services.common.errors import FailedPrecondition, InvalidInput
from services.common.settings import Settings
from services.common.telco_csv import parse_telco_csv
from services.monitoring import lifecycle_store as LS
from services.monitoring import listing
from services.monitoring.lifecycle import Actor, Lifecycle
from services.monitoring.retrain import RetrainSpec, Trainer
from services.monitoring.store import MonitoringStore
from tests.monitoring.conftest import TELCO_CSV

ADMIN = Actor("admin-ann", "token-of-ann")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "lifecycle-test"})


@pytest.fixture
def registry(settings) -> R.ModelRegistry:
    from services.common import mlflow_config

    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    return registry


@pytest.fixture
def store(tmp_path):
    store = MonitoringStore(f"sqlite:///{tmp_path / 'monitoring.db'}")
    yield store
    store.close()


class Recorder:
    """Stands in for the inference instances and Envoy, which these tests do not start (the e2e test does)."""

    def __init__(self):
        self.reloads: list[tuple[str, str]] = []
        self.weight = 30

    def reload(self, alias: str, token: str) -> str:
        self.reloads.append((alias, token))
        return ""

    def set_weight(self, percent: int) -> tuple[int, int]:
        previous, self.weight = self.weight, percent
        return percent, previous


def versions(registry: R.ModelRegistry, count: int) -> None:
    registry.client.create_registered_model(registry.name)
    for _ in range(count):
        registry.client.create_model_version(registry.name, source="file:///nowhere")


def test_promote_then_rollback_move_aliases_once_and_record_who(registry, store):
    events, recorder = LS.LifecycleStore(store.engine), Recorder()
    lifecycle = Lifecycle(registry, events, recorder.reload, recorder.set_weight)
    versions(registry, 3)
    with pytest.raises(FailedPrecondition, match="staging"):
        lifecycle.promote("", ADMIN)
    with pytest.raises(FailedPrecondition, match="previous"):
        lifecycle.rollback(ADMIN)
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
    registry.set_alias(R.ALIAS_STAGING, "3")
    with pytest.raises(InvalidInput) as bad:
        lifecycle.promote("three", ADMIN)
    assert bad.value.field == "version"
    with pytest.raises(FailedPrecondition, match="staging is version 3, not 2"):
        lifecycle.promote("2", ADMIN)

    first = lifecycle.promote("3", ADMIN)
    assert (first.production_version, first.other_version, first.changed, first.canary_percent) == ("3", "1", True, 0)
    assert registry.version_for(R.ALIAS_PRODUCTION) == "3" and registry.version_for(R.ALIAS_PREVIOUS) == "1"
    again = lifecycle.promote("", ADMIN)
    assert (again.production_version, again.other_version, again.changed) == ("3", "1", False)
    assert registry.version_for(R.ALIAS_PREVIOUS) == "1"  # a repeated promote does not make 3 its own previous

    back = lifecycle.rollback(Actor("admin-bob", "token-of-bob"))
    assert (back.production_version, back.other_version, back.changed) == ("1", "3", True)
    assert registry.version_for(R.ALIAS_PRODUCTION) == "1"
    assert lifecycle.rollback(ADMIN).changed is False and registry.version_for(R.ALIAS_PRODUCTION) == "1"
    # every call reloads production with the caller's token and leaves the canary weight at 0
    assert recorder.reloads == [("production", "token-of-ann")] * 2 + [("production", "token-of-bob"),
                                                                        ("production", "token-of-ann")]
    assert recorder.weight == 0

    trail = [(e.kind, e.actor, e.model_version, e.previous_version, e.canary_percent)
             for e in reversed(events.events(100))]
    assert trail == [(LS.PROMOTE, "admin-ann", "3", "1", None), (LS.CANARY_WEIGHT, "admin-ann", "", "", 0),
                     (LS.ROLLBACK, "admin-bob", "1", "3", None)]


def test_event_pages_are_stable_and_tokens_are_checked(store):
    events = LS.LifecycleStore(store.engine)
    for percent in range(5):
        events.add_event(LS.CANARY_WEIGHT, "admin", canary_percent=percent)
    first, token = listing.list_events(events, 2, "")
    second, token2 = listing.list_events(events, 2, token)
    last, token3 = listing.list_events(events, 2, token2)
    assert [e.canary_percent for e in first + second + last] == [4, 3, 2, 1, 0] and token3 == ""
    for size, token, field in ((1001, "", "page_size"), (-1, "", "page_size"), (5, "bm9wZQ==", "page_token"),
                               (5, "%%%", "page_token"), (5, "abc", "page_token"), (5, "é", "page_token")):
        with pytest.raises(InvalidInput) as bad:
            listing.list_events(events, size, token)
        assert bad.value.field == field
    with pytest.raises(InvalidInput) as bad:
        listing.list_predictions(store, start=first[0].at, end=first[-1].at, model_version="", alias="",
                                 customer_id="", shadow=None, size=0, token="")
    assert bad.value.field == "end_time"


def test_an_events_table_from_before_shadow_events_gets_the_column(tmp_path):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = MonitoringStore(url)
    LS.LifecycleStore(old.engine)
    with old.engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE model_events DROP COLUMN shadow_percent"))
    old.close()
    store = MonitoringStore(url)
    events = LS.LifecycleStore(store.engine)
    events.add_event(LS.SHADOW_PERCENT, "admin-ann", shadow_percent=100)
    assert [(e.kind, e.actor, e.shadow_percent) for e in events.events(10)] == [(LS.SHADOW_PERCENT, "admin-ann", 100)]
    store.close()


def test_shadow_changes_are_recorded_with_who(registry, store):
    events = LS.LifecycleStore(store.engine)
    shadow = [0]

    def set_shadow(percent):
        shadow.append(percent)
        return percent, shadow[-2]

    lifecycle = Lifecycle(registry, events, reload=lambda alias, token: "", set_weight=lambda p: (p, p),
                          set_shadow=set_shadow)
    assert lifecycle.set_shadow(100, Actor("admin-ann")) == (100, 0)
    assert lifecycle.set_shadow(100, Actor("admin-ann")) == (100, 100)  # unchanged: no event
    assert lifecycle.set_shadow(0, Actor("admin-bob")) == (0, 100)
    assert [(e.kind, e.actor, e.shadow_percent) for e in reversed(events.events(10))] == [
        (LS.SHADOW_PERCENT, "admin-ann", 100), (LS.SHADOW_PERCENT, "admin-bob", 0)]


@pytest.mark.parametrize("spec, field", [
    (RetrainSpec(False, [], False, ""), "include_shipped_data"),
    (RetrainSpec(True, [], False, "lightgbm"), "flavor"),
    (RetrainSpec(False, ["not-an-id"], False, ""), "dataset_ids[0]"),
    (RetrainSpec(False, ["0" * 32], False, ""), "dataset_ids[0]"),
    (RetrainSpec(False, [], True, ""), "include_feedback"),
    (RetrainSpec(False, ["0" * 32] * 21, False, ""), "dataset_ids"),
])
def test_retrain_refuses_bad_requests_naming_the_field(settings, store, registry, spec, field):
    trainer = Trainer(settings, store, LS.LifecycleStore(store.engine), registry, Recorder().reload)
    with pytest.raises(InvalidInput) as bad:
        trainer.start(spec, ADMIN)
    assert bad.value.field == field
    assert not (settings.data_dir / "training-runs").exists()  # nothing started


def test_an_upload_too_small_to_train_on_is_refused(settings, store, registry):
    data = parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6)
    record = store.references.save(data.frame.iloc[:20], data.churn.iloc[:20], "tiny")
    trainer = Trainer(settings, store, LS.LifecycleStore(store.engine), registry, Recorder().reload)
    with pytest.raises(InvalidInput, match="at least 50 rows") as bad:
        trainer.start(RetrainSpec(False, [record.dataset_id], False, ""), ADMIN)
    assert bad.value.field == "dataset_ids"


def wait_for(trainer: Trainer, run_id: str, timeout: float = 300) -> LS.TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = trainer.get(run_id)
        if run.state != LS.RUNNING:
            return run
        time.sleep(0.5)
    raise TimeoutError(f"training run {run_id} still running after {timeout}s")


def test_a_run_is_a_child_process_one_at_a_time_and_survives_a_monitoring_restart(settings, store, registry):
    data = parse_telco_csv(TELCO_CSV.read_bytes(), None, 10**6)
    upload = store.references.save(data.frame.iloc[:800], data.churn.iloc[:800], "first 800")
    runs, recorder = LS.LifecycleStore(store.engine), Recorder()
    first = Trainer(settings, store, runs, registry, recorder.reload, poll_seconds=0.2)
    run = first.start(RetrainSpec(False, [upload.dataset_id], False, "sklearn"), ADMIN)
    assert run.state == LS.RUNNING and run.started_by == "admin-ann" and run.rows == 800
    assert run.datasets == [{"source": "upload", "dataset_id": upload.dataset_id, "name": "first 800", "rows": 800}]
    with pytest.raises(FailedPrecondition, match=run.run_id):
        first.start(RetrainSpec(True, [], False, ""), ADMIN)
    first.close()  # monitoring stops; the child goes on

    second = Trainer(settings, store, runs, registry, recorder.reload, poll_seconds=0.2)
    second.resume()
    done = wait_for(second, run.run_id)
    second.close()
    assert done.state == LS.SUCCEEDED, done.error or done.log_tail
    assert done.progress == 1.0 and done.model_version == "1" and done.metrics["roc_auc"] > 0.6
    assert any("[ 20%]" in line for line in done.log_tail)
    # the staging instance reloads with monitoring's own credential ("" = not the starter's token, which is gone)
    assert done.error == "" and recorder.reloads == [("staging", "")]
    assert registry.version_for(R.ALIAS_STAGING) == "1"
    tags = registry.get("1").tags
    assert json.loads(tags["lineage.datasets"])[0]["rows"] == 800 and tags["lineage.rows"] == "800"
    assert tags["lineage.parent_version"] == "" and tags["lineage.code_version"]
    kinds = [(e.kind, e.actor, e.model_version) for e in reversed(runs.events(10))]
    assert kinds == [(LS.RETRAIN_STARTED, "admin-ann", ""), (LS.RETRAIN_FINISHED, "admin-ann", "1")]


def test_persistent_drift_of_production_starts_one_retrain(registry, store):
    import types

    from services.monitoring.drift import DriftResult
    from services.monitoring.drift_retrain import DriftRetrain
    from services.monitoring.metrics import VersionMetrics

    class Starts:
        def __init__(self):
            self.specs, self.busy = [], False

        def start(self, spec, actor):
            if self.busy:
                raise FailedPrecondition("a run is going")
            self.specs.append((spec, actor.subject))
            return types.SimpleNamespace(run_id=f"run-{len(self.specs)}")

    def update(share_of: dict[str, float]) -> list[VersionMetrics]:
        return [VersionMetrics("m", v, 600, 0, {}, DriftResult(share > 0.5, share, int(share * 19), 19, (), 5000, 500,
                                                                 v, "training data")) for v, share in share_of.items()]

    versions(registry, 2)
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
    starts = Starts()
    off = DriftRetrain(starts, registry, store, share=0.0, after=2)
    assert [off.observe(update({"1": 0.9})) for _ in range(5)] == [None] * 5
    auto = DriftRetrain(starts, registry, store, share=0.5, after=3)
    # staging drifting does not count; a calm update resets the streak
    observed = [auto.observe(update(u)) for u in ({"1": 0.6}, {"1": 0.6}, {"1": 0.1}, {"1": 0.2, "2": 0.9},
                                                  {"1": 0.7}, {"1": 0.5}, {"1": 0.8})]
    assert observed == [None] * 6 + ["run-1"]
    spec, actor = starts.specs[0]
    assert actor == "monitoring:drift" and spec.include_shipped_data and not spec.include_feedback
    starts.busy = True  # a run still going: nothing new, and counting starts again
    assert [auto.observe(update({"1": 0.9})) for _ in range(3)] == [None] * 3 and auto.streak == 0
