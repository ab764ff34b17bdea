"""The automatic canary as plain Python over a real store (SQLite and PostgreSQL) and a fresh MLflow registry: a good
candidate steps 10 → 50 → 100 and is promoted as `monitoring:canary`; a bad one is rolled back at once; a restarted
monitoring (a new AutoCanary over the same store) resumes a rollout at its step and leaves a rolled-back or promoted
version alone; a promote whose reload failed is finished at the next tick; CANARY_AUTO_PROMOTE off holds at 100 %."""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from services.common import features as F
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.errors import NotReady
from services.common.settings import Settings
from services.monitoring import canary_analysis as CA
from services.monitoring import lifecycle_store as LS
from services.monitoring.auto_canary import AutoCanary
from services.monitoring.lifecycle import Lifecycle
from services.monitoring.store import MonitoringStore, PredictionRow, utcnow
from tests.monitoring.conftest import batch_of

STEPS = (10, 50, 100)


@dataclasses.dataclass
class World:
    """One monitoring's parts over a store and registry that outlive it (`restart()` builds the next one)."""
    settings: Settings
    registry: R.ModelRegistry
    store: MonitoringStore
    events: LS.LifecycleStore
    weights: list[int]
    reloads: list[tuple[str, str]]
    promote: bool = True
    failing_reload: bool = False

    def set_weight(self, percent: int) -> tuple[int, int]:
        self.weights.append(percent)
        return percent, self.weights[-2]

    def reload(self, alias: str, token: str) -> str:
        if self.failing_reload:
            raise NotReady(f"the {alias} inference instance did not reload: UNAVAILABLE")
        self.reloads.append((alias, token))
        return ""

    def restart(self) -> AutoCanary:
        lifecycle = Lifecycle(self.registry, self.events, reload=self.reload, set_weight=self.set_weight)
        analyzer = CA.CanaryAnalyzer(self.store, self.registry, self.settings, error_rate=lambda alias: 0.0)
        return AutoCanary(analyzer, self.registry, lifecycle, LS.LifecycleStore(self.store.engine), STEPS,
                          promote=self.promote)

    def alias(self, alias: str) -> str | None:
        return self.registry.alias_or_none(alias)


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'monitoring.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_url")
    settings = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "MODEL_NAME": "auto-test",
                                  "CANARY_MIN_PREDICTIONS": "50", "CANARY_MIN_LABELLED": "50"})
    registry = R.ModelRegistry(mlflow_config.tracking_uri(settings), settings.model_name)
    registry.client.create_registered_model(registry.name)
    for _ in range(5):
        registry.client.create_model_version(registry.name, source="file:///nowhere")
    registry.set_alias(R.ALIAS_PRODUCTION, "1")
    store = MonitoringStore(url)
    yield World(settings, registry, store, LS.LifecycleStore(store.engine), [0], [])
    if request.param == "postgresql":  # one database per run: leave it empty for the next parametrized test
        from services.monitoring.store import metadata

        LS.metadata.drop_all(store.engine)
        metadata.drop_all(store.engine)
    store.close()


_ids = itertools.count()


def traffic(world: World, version: str, good: bool, rng=np.random.default_rng(3)) -> None:
    """60 labelled predictions per side, made now (after the step began)."""
    y = rng.random(60) < 0.3
    skilled = np.clip(np.where(y, 0.75, 0.25) + rng.normal(0, 0.1, 60), 0, 1)
    batch = {"production": (world.alias(R.ALIAS_PRODUCTION), skilled),
             "staging": (version, skilled if good else rng.random(60))}
    records, labels = [], {}
    for alias, (v, p) in batch.items():
        for value, label in zip(p, y):
            pid = f"{alias}-{next(_ids)}"
            records.append(PredictionRow(pid, pid, {f.name: None for f in F.FEATURES}, bool(value >= 0.5),
                                         float(value), "m", v, alias, 3.0, utcnow(), "r"))
            labels[pid] = bool(label)
    world.store.record_predictions(batch_of(records))
    world.store.save_feedback(labels)


def canary_events(world: World) -> list[tuple[str, int | None, str]]:
    return [(e.kind, e.canary_percent, e.model_version) for e in reversed(world.events.events(100))
            if e.actor == "monitoring:canary"]


def test_a_good_candidate_is_promoted_and_a_bad_one_rolled_back_across_restarts(world):
    auto = world.restart()
    world.registry.set_alias(R.ALIAS_STAGING, "1")
    assert auto.tick() is None and world.weights == [0]  # staging = production: nothing to roll out

    world.registry.set_alias(R.ALIAS_STAGING, "2")
    assert auto.tick() == "started version 2 at 10%"
    assert auto.tick() is None  # no traffic in this step yet: HOLD
    traffic(world, "2", good=True)
    assert auto.tick() == "version 2 at 50%"

    auto = world.restart()  # monitoring restarts mid-rollout: it resumes at 50 %, not at the first step
    assert world.events.rollout("2").step == 1
    assert auto.tick() is None and world.weights == [0, 10, 50, 50]  # the step's weight re-asserted once, no event
    traffic(world, "2", good=True)
    assert auto.tick() == "version 2 at 100%"
    # at 100 % production has no split traffic of its own: the last step is judged over the whole rollout
    assert auto.tick() == "promoted version 2"
    assert (world.alias(R.ALIAS_PRODUCTION), world.alias(R.ALIAS_PREVIOUS)) == ("2", "1")
    assert world.weights == [0, 10, 50, 50, 100, 0] and world.reloads == [("production", "")]  # its own credential
    promote = world.events.events(2)[1]
    assert (promote.kind, promote.actor, promote.model_version, promote.previous_version) == (
        LS.PROMOTE, "monitoring:canary", "2", "1")
    assert promote.detail.startswith("production 1 -> 2; auto canary: ok: ")
    assert auto.tick() is None and world.events.rollout("2").state == LS.ROLLOUT_PROMOTED

    world.registry.set_alias(R.ALIAS_STAGING, "3")  # a candidate that learnt nothing
    assert auto.tick() == "started version 3 at 10%"
    traffic(world, "3", good=False)
    assert auto.tick() == "rolled back version 3"
    last = world.events.events(1)[0]
    assert last.actor == "monitoring:canary" and last.canary_percent == 0 and "failed: live ROC AUC" in last.detail
    auto = world.restart()  # a rolled-back version stays left alone after a restart
    assert auto.tick() is None and world.weights[-1] == 0

    world.weights.append(10)  # the weight already at the first step: the start of a new version is still news
    world.registry.set_alias(R.ALIAS_STAGING, "4")
    assert auto.tick() == "started version 4 at 10%"
    started = world.events.events(1)[0]
    assert (started.canary_percent, started.detail) == (10, "auto canary: version 4 starts at 10%")
    world.registry.set_alias(R.ALIAS_STAGING, "5")  # staging moves on: 4 is superseded, 5 starts from the start
    assert auto.tick() == "started version 5 at 10%"
    assert world.events.rollout("4").state == LS.ROLLOUT_SUPERSEDED

    # a human's Rollback of the promoted version 2 makes it a candidate again: the automatic canary leaves it
    world.registry.set_alias(R.ALIAS_PRODUCTION, "1")
    world.registry.set_alias(R.ALIAS_STAGING, "2")
    assert world.restart().tick() is None
    assert canary_events(world) == [
        (LS.CANARY_WEIGHT, 10, ""), (LS.CANARY_WEIGHT, 50, ""), (LS.CANARY_WEIGHT, 100, ""), (LS.PROMOTE, None, "2"),
        (LS.CANARY_WEIGHT, 0, ""), (LS.CANARY_WEIGHT, 10, ""), (LS.CANARY_WEIGHT, 0, ""), (LS.CANARY_WEIGHT, 10, ""),
        (LS.CANARY_WEIGHT, 10, "")]


def through_every_step(world, auto, version: str) -> None:
    """Stage `version` and give it good traffic at each step, so the last tick judges its last step."""
    world.registry.set_alias(R.ALIAS_STAGING, version)
    auto.tick()
    for _ in STEPS[1:]:
        traffic(world, version, good=True)
        auto.tick()


def test_a_promote_whose_reload_failed_is_finished_at_the_next_tick(world):
    auto = world.restart()
    through_every_step(world, auto, "2")
    assert world.weights[-1] == 100
    world.failing_reload = True
    with pytest.raises(NotReady, match="did not reload"):
        auto.tick()
    assert world.alias(R.ALIAS_PRODUCTION) == "2" and world.weights[-1] == 100  # the aliases moved first
    assert world.events.rollout("2").state == LS.ROLLOUT_RUNNING
    world.failing_reload = False
    assert world.restart().tick() == "promoted version 2"
    assert world.reloads == [("production", "")] and world.weights[-1] == 0
    assert world.events.rollout("2").state == LS.ROLLOUT_PROMOTED
    assert [e.kind for e in world.events.events(10)].count(LS.PROMOTE) == 1  # promoted once, settled twice


def test_with_auto_promote_off_a_candidate_keeps_its_last_step(world):
    world.promote = False
    auto = world.restart()
    through_every_step(world, auto, "2")
    assert auto.tick() == "version 2 holds at 100%"
    assert world.restart().tick() is None and world.weights[-1] == 100
    assert world.alias(R.ALIAS_PRODUCTION) == "1" and world.reloads == []
    assert world.events.rollout("2").state == LS.ROLLOUT_COMPLETE


def test_auto_canary_settings(tmp_path):
    base = {"DATA_DIR": str(tmp_path)}
    assert Settings.from_env(base).canary_auto is False
    assert Settings.from_env(dict(base, CANARY_AUTO="true")).canary_auto_promote is True
    assert Settings.from_env(dict(base, CANARY_AUTO_PROMOTE="false")).canary_auto_promote is False
    tuned = Settings.from_env(dict(base, CANARY_AUTO="true", CANARY_AUTO_STEPS="5, 20,100"))
    assert tuned.canary_auto and tuned.canary_auto_steps == (5, 20, 100)
    for raw in ("50,10", "0,10", "10,10", "ten", "10,101"):
        with pytest.raises(ValueError, match="CANARY_AUTO_STEPS"):
            Settings.from_env(dict(base, CANARY_AUTO_STEPS=raw))
