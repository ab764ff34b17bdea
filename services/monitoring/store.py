"""The monitoring store (SQLAlchemy Core): the prediction log and feedback labels (uploaded reference sets are
`reference_store`'s, the lifecycle's state `lifecycle_store`'s, on the same engine).

SQLite (WAL) is the embedded default, PostgreSQL by URL; the same statements run on both. Inserts are idempotent
by prediction id through the dialect's `INSERT … ON CONFLICT DO NOTHING`, so a retried outbox batch adds nothing.
Inputs are kept raw, one column per Telco feature in CSV spelling, so drift reads them back as the same frame the
training reference is.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterable, Sequence

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from services.common.db import aware as _aware, make_engine, utcnow
from services.common import features as F
from services.common.prediction_record import served_twin
from services.common.telco_csv import typed_frame
from services.monitoring.reference_store import ReferenceSets
from services.monitoring.row_insert import RowInsert

metadata = sa.MetaData()

_FEATURE_TYPES = {F.NUMERIC: sa.Float, F.BOOLEAN: sa.String(32), F.CATEGORICAL: sa.String(32)}
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER PRIMARY KEY only

predictions = sa.Table(
    "predictions", metadata,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),  # insertion order: "the last N" = highest seq
    sa.Column("prediction_id", sa.String(128), nullable=False, unique=True),
    sa.Column("customer_id", sa.String(128), nullable=False, default=""),
    *[sa.Column(f.name, _FEATURE_TYPES[f.kind], nullable=True) for f in F.FEATURES],
    sa.Column("churn", sa.Boolean, nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("model_alias", sa.String(64), nullable=False, default=""),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False, default=""),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("shadow", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_predictions_customer", "customer_id", "seq"),
    sa.Index("ix_predictions_version", "model_version", "seq"),
    sa.Index("ix_predictions_request", "request_id"),  # a shadow row finds its served twin
)

feedback = sa.Table(
    "feedback", metadata,
    sa.Column("prediction_id", sa.String(128), sa.ForeignKey("predictions.prediction_id"), primary_key=True),
    sa.Column("actual_churn", sa.Boolean, nullable=False),
    sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=False),
)


# Records the log refused (by the shared rules in services/common/prediction_record.py, or by the database itself):
# kept whole, with why, so one poison record never blocks the rows around it and nothing is silently dropped.
dead_letters = sa.Table(
    "dead_letters", metadata,
    sa.Column("seq", _ID, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(128), nullable=False, default=""),  # cut to fit; may repeat
    sa.Column("field", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(512), nullable=False),
    sa.Column("record", sa.LargeBinary, nullable=False),  # as received, serialized: see `kind`
    # "record": a PredictionRecord; "columns": a PredictionColumns (a bad row cut from its batch, or a malformed one)
    sa.Column("kind", sa.String(16), nullable=False, default="record"),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
)


class RowsRefused(Exception):
    """The database refused a batch for its data (a value too long, a constraint): some row in it is bad, the
    connection is fine. Any other database error is left to propagate (the sender retries the whole batch)."""


@dataclasses.dataclass(frozen=True)
class PredictionRow:
    """One logged prediction; `inputs` maps proto feature names to CSV-spelling values (None = absent)."""

    prediction_id: str
    customer_id: str
    inputs: dict[str, object]
    churn: bool
    probability: float
    model_name: str
    model_version: str
    model_alias: str
    latency_ms: float
    predicted_at: dt.datetime
    request_id: str
    shadow: bool = False


@dataclasses.dataclass(frozen=True)
class PredictionBatch:
    """Predictions to store, column by column (every sequence has one entry per row); `inputs` maps proto feature
    names to CSV-spelling values (None = absent), as PredictionRow's do. One insert, no object per row."""

    prediction_id: Sequence[str]
    customer_id: Sequence[str]
    inputs: dict[str, Sequence[object]]
    churn: Sequence[bool]
    probability: Sequence[float]
    model_name: Sequence[str]
    model_version: Sequence[str]
    model_alias: Sequence[str]
    latency_ms: Sequence[float]
    predicted_at: Sequence[dt.datetime]
    request_id: Sequence[str]
    shadow: Sequence[bool]

    def __len__(self) -> int:
        return len(self.prediction_id)


@dataclasses.dataclass(frozen=True)
class PredictionFilter:
    """ListPredictions' filters (empty / None = any); `before_seq` pages backwards from a previous page."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None
    model_version: str = ""
    alias: str = ""
    customer_id: str = ""
    shadow: bool | None = None
    before_seq: int | None = None


@dataclasses.dataclass(frozen=True)
class LoggedRow:
    seq: int
    row: PredictionRow
    actual_churn: bool | None


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    prediction_id: str
    field: str
    reason: str
    record: bytes
    kind: str = "record"  # what `record` holds: see the dead_letters table


@dataclasses.dataclass(frozen=True)
class LabelledRow:
    prediction_id: str
    customer_id: str
    churn: bool
    probability: float
    actual_churn: bool
    model_name: str
    model_version: str
    model_alias: str
    predicted_at: dt.datetime
    feedback_at: dt.datetime


def _chunks(ids: list[str], size: int = 500) -> Iterable[list[str]]:
    """`ids` in slices small enough for one `IN (...)` on every database."""
    return (ids[start:start + size] for start in range(0, len(ids), size))


class MonitoringStore:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self._dialect = self.engine.dialect.name
        self._row_inserts: dict[tuple[str, ...], RowInsert] = {}
        metadata.create_all(self.engine)
        self._add_missing_columns()
        self.references = ReferenceSets(self.engine)

    def _add_missing_columns(self) -> None:
        """Stores created before `predictions.shadow` or `dead_letters.kind` existed get the column, and the
        request-id index (create_all never alters a table)."""
        inspector = sa.inspect(self.engine)
        for table, column, ddl in (("predictions", "shadow", "BOOLEAN NOT NULL DEFAULT FALSE"),
                                   ("dead_letters", "kind", "VARCHAR(16) NOT NULL DEFAULT 'record'")):
            if column not in {c["name"] for c in inspector.get_columns(table)}:
                with self.engine.begin() as connection:
                    connection.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
        with self.engine.begin() as connection:
            connection.execute(sa.text("CREATE INDEX IF NOT EXISTS ix_predictions_request ON predictions (request_id)"))

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: sa.Table):
        return (postgresql.insert if self._dialect == "postgresql" else sqlite.insert)(table)

    # ---- prediction log ------------------------------------------------------------------------------------
    def record_predictions(self, batch: PredictionBatch) -> int:
        """Store rows idempotently by prediction id; returns how many were new (the rest were duplicates)."""
        if not len(batch):
            return 0
        columns = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch) if f.name != "inputs"}
        columns.update(batch.inputs)
        names = (*columns, "recorded_at")
        if names not in self._row_inserts:
            self._row_inserts[names] = RowInsert(self.engine.dialect, self._insert(predictions).on_conflict_do_nothing(
                index_elements=["prediction_id"]), predictions, names)
        insert = self._row_inserts[names]
        try:
            with self.engine.begin() as connection:
                return connection.exec_driver_sql(insert.sql, insert.parameters(
                    columns, len(batch), recorded_at=utcnow())).rowcount
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
            raise RowsRefused(type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__) from exc

    def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(dead_letters.insert(), [
                {"prediction_id": d.prediction_id[:128], "field": d.field[:256], "reason": d.reason[:512],
                 "record": d.record, "kind": d.kind, "received_at": now} for d in letters])

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, newest first."""
        query = sa.select(dead_letters).order_by(dead_letters.c.seq.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [DeadLetter(r.prediction_id, r.field, r.reason, bytes(r.record), r.kind)
                    for r in connection.execute(query)]

    def count_dead_letters(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar_one())

    def count_predictions(self, model_version: str = "") -> int:
        query = sa.select(sa.func.count()).select_from(predictions)
        if model_version:
            query = query.where(predictions.c.model_version == model_version)
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def recent_inputs(self, window: int, model_version: str = "") -> pd.DataFrame:
        """The last `window` logged inputs (newest first), as a Telco frame in CSV spelling (no customerID): a
        version's own (shadow copies included: that version saw them), or across versions the served ones (a shadow
        row repeats an input production already logged)."""
        columns = [predictions.c[f.name] for f in F.FEATURES]
        query = sa.select(*columns).order_by(predictions.c.seq.desc()).limit(window)
        query = query.where(predictions.c.model_version == model_version if model_version
                            else predictions.c.shadow.is_(False))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return typed_frame(pd.DataFrame(rows, columns=list(F.FEATURE_COLUMNS)))

    def list_predictions(self, where: PredictionFilter, limit: int) -> list[LoggedRow]:
        """Logged predictions with their inputs and labels, newest first."""
        p = predictions.c
        query = (sa.select(predictions, feedback.c.actual_churn)
                 .join(feedback, feedback.c.prediction_id == p.prediction_id, isouter=True)
                 .order_by(p.seq.desc()).limit(limit))
        for wanted, condition in ((where.start, lambda: p.predicted_at >= where.start),
                                  (where.end, lambda: p.predicted_at < where.end),
                                  (where.model_version, lambda: p.model_version == where.model_version),
                                  (where.alias, lambda: p.model_alias == where.alias),
                                  (where.customer_id, lambda: p.customer_id == where.customer_id),
                                  (where.shadow is not None, lambda: p.shadow == where.shadow),
                                  (where.before_seq is not None, lambda: p.seq < where.before_seq)):
            if wanted:
                query = query.where(condition())
        with self.engine.connect() as connection:
            found = connection.execute(query).mappings().all()
        return [LoggedRow(r["seq"], PredictionRow(
            prediction_id=r["prediction_id"], customer_id=r["customer_id"], inputs={f.name: r[f.name] for f in
                                                                                     F.FEATURES},
            churn=bool(r["churn"]), probability=float(r["probability"]), model_name=r["model_name"],
            model_version=r["model_version"], model_alias=r["model_alias"], latency_ms=float(r["latency_ms"]),
            predicted_at=_aware(r["predicted_at"]), request_id=r["request_id"], shadow=bool(r["shadow"])),
            None if r["actual_churn"] is None else bool(r["actual_churn"])) for r in found]

    def scores_since(self, alias: str, model_version: str, since: dt.datetime, shadow: bool = False) -> pd.DataFrame:
        """One alias+version's served (or, with `shadow`, mirrored) predictions since `since`: probability,
        latency_ms and actual_churn (None without feedback) — what a canary analysis compares."""
        p = predictions.c
        query = (sa.select(p.probability, p.latency_ms, feedback.c.actual_churn)
                 .join(feedback, feedback.c.prediction_id == p.prediction_id, isouter=True)
                 .where(p.model_alias == alias, p.model_version == model_version, p.predicted_at >= since,
                        p.shadow.is_(shadow)))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return pd.DataFrame(rows, columns=["probability", "latency_ms", "actual_churn"])

    def shadow_pairs_since(self, staging_version: str, production_version: str, since: dt.datetime) -> pd.DataFrame:
        """The staging version's shadow predictions since `since`, each beside production's answer to the same
        request and row (`<id>-shadow-<row>` against `<id>-<row>`): both probabilities and latencies, and the label
        of production's answer (the one the customer got). Shadow rows whose twin is missing (not shipped yet, or
        answered by another production version) are left out. Twins are looked up by prediction id, so a request
        of n rows costs n lookups (joining on the request id alone would pair every row with every row: n²)."""
        shadows = (sa.select(predictions.c.prediction_id, predictions.c.probability, predictions.c.latency_ms)
                   .where(predictions.c.shadow.is_(True), predictions.c.model_alias == "staging",
                          predictions.c.model_version == staging_version, predictions.c.predicted_at >= since,
                          predictions.c.request_id != ""))
        answered = (sa.select(predictions.c.prediction_id, predictions.c.probability, predictions.c.latency_ms,
                              feedback.c.actual_churn)
                    .join(feedback, feedback.c.prediction_id == predictions.c.prediction_id, isouter=True)
                    .where(predictions.c.shadow.is_(False), predictions.c.model_alias == "production",
                           predictions.c.model_version == production_version))
        with self.engine.connect() as connection:
            twins = {served_twin(pid): (p, latency) for pid, p, latency in connection.execute(shadows)}
            twins.pop(None, None)
            rows = [twins[pid] + (p, latency, label) for chunk in _chunks(list(twins))
                    for pid, p, latency, label in connection.execute(
                        answered.where(predictions.c.prediction_id.in_(chunk)))]
        return pd.DataFrame(rows, columns=[
            "staging_probability", "staging_latency_ms", "production_probability", "production_latency_ms",
            "actual_churn"])

    def labelled_inputs(self) -> tuple[pd.DataFrame, pd.Series]:
        """Every served (not shadow) prediction that has a feedback label: its inputs as a Telco frame and the
        true label — training data that the platform collected itself."""
        columns = [predictions.c[f.name] for f in F.FEATURES]
        query = (sa.select(*columns, feedback.c.actual_churn)
                 .join(feedback, feedback.c.prediction_id == predictions.c.prediction_id)
                 .where(predictions.c.shadow.is_(False)).order_by(predictions.c.seq))
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        frame = pd.DataFrame([r[:-1] for r in rows], columns=list(F.FEATURE_COLUMNS))
        return typed_frame(frame), pd.Series([bool(r[-1]) for r in rows], dtype=bool)

    def model_versions(self) -> list[str]:
        """Versions that have logged predictions."""
        with self.engine.connect() as connection:
            return [v for (v,) in connection.execute(
                sa.select(predictions.c.model_version).distinct().order_by(predictions.c.model_version))]

    def prediction_counts(self) -> dict[tuple[str, str, str], int]:
        """(model name, version, alias) -> predictions logged."""
        query = sa.select(predictions.c.model_name, predictions.c.model_version, predictions.c.model_alias,
                          sa.func.count()).group_by(predictions.c.model_name, predictions.c.model_version,
                                                     predictions.c.model_alias)
        with self.engine.connect() as connection:
            return {(n, v, a): int(c) for n, v, a, c in connection.execute(query)}

    # ---- feedback ------------------------------------------------------------------------------------------
    def existing_prediction_ids(self, ids: Iterable[str]) -> set[str]:
        found: set[str] = set()
        ids = list(dict.fromkeys(ids))
        with self.engine.connect() as connection:
            for chunk in _chunks(ids):
                found.update(connection.execute(
                    sa.select(predictions.c.prediction_id).where(predictions.c.prediction_id.in_(chunk))).scalars())
        return found

    def latest_prediction_for_customers(self, customer_ids: Iterable[str]) -> dict[str, str]:
        """customer id -> prediction id of that customer's most recent served prediction (a shadow row answered no
        one: its twin, the answer the customer got, takes the label)."""
        result: dict[str, str] = {}
        ids = list(dict.fromkeys(customer_ids))
        latest = (sa.select(predictions.c.customer_id, sa.func.max(predictions.c.seq).label("seq"))
                  .where(predictions.c.shadow.is_(False)).group_by(predictions.c.customer_id).subquery())
        with self.engine.connect() as connection:
            for chunk in _chunks(ids):
                query = (sa.select(predictions.c.customer_id, predictions.c.prediction_id)
                         .join(latest, predictions.c.seq == latest.c.seq)
                         .where(latest.c.customer_id.in_(chunk)))
                result.update({c: p for c, p in connection.execute(query)})
        return result

    def save_feedback(self, labels: dict[str, bool]) -> int:
        """Upsert labels by prediction id (a corrected label replaces the earlier one)."""
        if not labels:
            return 0
        now = utcnow()
        values = [{"prediction_id": p, "actual_churn": bool(label), "feedback_at": now} for p, label in labels.items()]
        statement = self._insert(feedback)
        statement = statement.on_conflict_do_update(
            index_elements=["prediction_id"],
            set_={"actual_churn": statement.excluded.actual_churn, "feedback_at": statement.excluded.feedback_at})
        with self.engine.begin() as connection:
            for start in range(0, len(values), 500):
                connection.execute(statement, values[start:start + 500])
        return len(values)

    def labelled(self, limit: int | None = None, model_version: str = "") -> list[LabelledRow]:
        """The joined log (predictions with a label), newest prediction first."""
        p = predictions.c
        query = (sa.select(p.prediction_id, p.customer_id, p.churn, p.probability, feedback.c.actual_churn,
                           p.model_name, p.model_version, p.model_alias, p.predicted_at, feedback.c.feedback_at)
                 .join(feedback, feedback.c.prediction_id == p.prediction_id).order_by(p.seq.desc()))
        if model_version:
            query = query.where(p.model_version == model_version)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [LabelledRow(r[0], r[1], bool(r[2]), float(r[3]), bool(r[4]), r[5], r[6], r[7], _aware(r[8]),
                                _aware(r[9])) for r in connection.execute(query)]

    # ---- reference sets ------------------------------------------------------------------------------------
