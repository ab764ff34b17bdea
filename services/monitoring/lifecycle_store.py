"""The model lifecycle's durable state, beside the prediction log in the monitoring database: training runs (so a
run's state and progress survive a restart of monitoring), the automatic canary's rollouts (so a restarted
monitoring resumes a rollout at its step and leaves a rolled-back version alone) and the audit trail of model events
(who retrained, promoted, rolled back, moved the canary weight or the shadow percent, and when)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import sqlalchemy as sa

from services.common.errors import FailedPrecondition
from services.monitoring.store import _ID, _aware, utcnow

metadata = sa.MetaData()

RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
RETRAIN_STARTED, RETRAIN_FINISHED, RETRAIN_FAILED = "retrain_started", "retrain_finished", "retrain_failed"
PROMOTE, ROLLBACK, CANARY_WEIGHT, SHADOW_PERCENT = "promote", "rollback", "canary_weight", "shadow_percent"
# A rollout of the automatic canary: RUNNING steps the weight; COMPLETE passed its last step with CANARY_AUTO_PROMOTE
# off (a human promotes); PROMOTED and ROLLED_BACK are done; SUPERSEDED stopped when staging moved to another version.
ROLLOUT_RUNNING, ROLLOUT_COMPLETE, ROLLOUT_PROMOTED = "running", "complete", "promoted"
ROLLOUT_ROLLED_BACK, ROLLOUT_SUPERSEDED = "rolled_back", "superseded"

training_runs = sa.Table(
    "training_runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("message", sa.String(512), nullable=False, default=""),
    sa.Column("log_tail", sa.Text, nullable=False, default="[]"),
    sa.Column("started_by", sa.String(256), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("model_version", sa.String(32), nullable=False, default=""),
    sa.Column("parent_version", sa.String(32), nullable=False, default=""),
    sa.Column("datasets", sa.Text, nullable=False, default="[]"),
    sa.Column("rows", sa.Integer, nullable=False, default=0),
    sa.Column("flavor", sa.String(32), nullable=False),
    sa.Column("metrics", sa.Text, nullable=False, default="{}"),
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("folder", sa.String(1024), nullable=False),
)

model_events = sa.Table(
    "model_events", metadata,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, default=""),
    sa.Column("previous_version", sa.String(32), nullable=False, default=""),
    sa.Column("run_id", sa.String(64), nullable=False, default=""),
    sa.Column("canary_percent", sa.Integer, nullable=True),
    sa.Column("detail", sa.String(1024), nullable=False, default=""),
    sa.Column("shadow_percent", sa.Integer, nullable=True),
)

canary_rollouts = sa.Table(
    "canary_rollouts", metadata,
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),  # index into CANARY_AUTO_STEPS
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("step_since", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclasses.dataclass(frozen=True)
class Rollout:
    model_version: str
    state: str
    step: int
    started_at: dt.datetime
    step_since: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class TrainingRun:
    run_id: str
    state: str
    progress: float
    message: str
    log_tail: list[str]
    started_by: str
    started_at: dt.datetime
    finished_at: dt.datetime | None
    model_version: str
    parent_version: str
    datasets: list[dict]
    rows: int
    flavor: str
    metrics: dict[str, float]
    error: str
    pid: int | None
    folder: str


@dataclasses.dataclass(frozen=True)
class ModelEvent:
    seq: int
    kind: str
    actor: str
    at: dt.datetime
    model_version: str = ""
    previous_version: str = ""
    run_id: str = ""
    canary_percent: int | None = None
    detail: str = ""
    shadow_percent: int | None = None


_JSON_COLUMNS = ("log_tail", "datasets", "metrics")


def _run(row) -> TrainingRun:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["started_at"], values["finished_at"] = _aware(values["started_at"]), _aware(values["finished_at"])
    return TrainingRun(**values)


class LifecycleStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine)
        if "shadow_percent" not in {c["name"] for c in sa.inspect(engine).get_columns("model_events")}:
            with engine.begin() as connection:  # a store from before shadow events (create_all never alters)
                connection.execute(sa.text("ALTER TABLE model_events ADD COLUMN shadow_percent INTEGER"))

    # ---- training runs --------------------------------------------------------------------------------------------
    def start_run(self, run: TrainingRun) -> None:
        """Insert a RUNNING run unless one is already running (FailedPrecondition naming it)."""
        values = dataclasses.asdict(run)
        for column in _JSON_COLUMNS:
            values[column] = json.dumps(values[column])
        with self.engine.begin() as connection:
            running = connection.execute(sa.select(training_runs.c.run_id, training_runs.c.started_by).where(
                training_runs.c.state == RUNNING)).first()
            if running is not None:
                raise FailedPrecondition(f"training run {running[0]} (started by {running[1]}) is still running; "
                                         "wait for it (GetTrainingRun) before starting another")
            connection.execute(training_runs.insert().values(**values))

    def update_run(self, run_id: str, **changes) -> None:
        for column in _JSON_COLUMNS:
            if column in changes:
                changes[column] = json.dumps(changes[column])
        with self.engine.begin() as connection:
            connection.execute(training_runs.update().where(training_runs.c.run_id == run_id).values(**changes))

    def get_run(self, run_id: str) -> TrainingRun | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(training_runs).where(
                training_runs.c.run_id == run_id)).mappings().first()
        return None if row is None else _run(row)

    def running_runs(self) -> list[TrainingRun]:
        with self.engine.connect() as connection:
            rows = connection.execute(sa.select(training_runs).where(training_runs.c.state == RUNNING)).mappings()
            return [_run(r) for r in rows]

    # ---- events ---------------------------------------------------------------------------------------------------
    def add_event(self, kind: str, actor: str, **fields) -> ModelEvent:
        at = utcnow()
        with self.engine.begin() as connection:
            seq = connection.execute(model_events.insert().values(kind=kind, actor=actor, at=at, **fields)
                                     .returning(model_events.c.seq)).scalar_one()
        return ModelEvent(seq, kind, actor, at, **fields)

    def events(self, limit: int, before_seq: int | None = None) -> list[ModelEvent]:
        """Newest first; `before_seq` continues a previous page."""
        query = sa.select(model_events).order_by(model_events.c.seq.desc()).limit(limit)
        if before_seq is not None:
            query = query.where(model_events.c.seq < before_seq)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [ModelEvent(**{**r, "at": _aware(r["at"])}) for r in rows]

    # ---- the automatic canary's rollouts --------------------------------------------------------------------------
    def rollout(self, model_version: str) -> Rollout | None:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(canary_rollouts).where(
                canary_rollouts.c.model_version == model_version)).mappings().first()
        if row is None:
            return None
        return Rollout(**{**row, **{k: _aware(row[k]) for k in ("started_at", "step_since", "updated_at")}})

    def start_rollout(self, model_version: str, at: dt.datetime) -> Rollout:
        """A fresh rollout of `model_version` at its first step; any other running rollout is superseded (one at a
        time, like the one `staging` alias)."""
        with self.engine.begin() as connection:
            connection.execute(canary_rollouts.update().where(
                canary_rollouts.c.state == ROLLOUT_RUNNING, canary_rollouts.c.model_version != model_version)
                .values(state=ROLLOUT_SUPERSEDED, updated_at=at))
            connection.execute(canary_rollouts.delete().where(canary_rollouts.c.model_version == model_version))
            connection.execute(canary_rollouts.insert().values(model_version=model_version, state=ROLLOUT_RUNNING,
                                                               step=0, started_at=at, step_since=at, updated_at=at))
        return Rollout(model_version, ROLLOUT_RUNNING, 0, at, at, at)

    def update_rollout(self, model_version: str, **changes) -> None:
        with self.engine.begin() as connection:
            connection.execute(canary_rollouts.update().where(canary_rollouts.c.model_version == model_version)
                               .values(updated_at=utcnow(), **changes))
