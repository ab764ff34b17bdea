"""Uploaded training sets (UploadTrainingData): kept whole as gzip'd CSV in the monitoring database, read back
through the one Telco CSV parser — as a Retrain's data, or as a drift report's reference (`reference_id`)."""
from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import io
import uuid

import pandas as pd
import sqlalchemy as sa

from services.common import features as F
from services.common.db import aware, utcnow
from services.common.telco_csv import TelcoCsv, parse_telco_csv

metadata = sa.MetaData()

reference_sets = sa.Table(
    "reference_sets", metadata,
    sa.Column("dataset_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False, default=""),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("churn_rows", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("csv_gzip", sa.LargeBinary, nullable=False),  # the cleaned frame + Churn as gzip'd CSV
)


@dataclasses.dataclass(frozen=True)
class ReferenceSet:
    dataset_id: str
    name: str
    rows: int
    churn_rows: int
    created_at: dt.datetime


class ReferenceSets:
    def __init__(self, engine: sa.Engine):
        self.engine = engine
        metadata.create_all(engine)

    def save(self, frame: pd.DataFrame, churn: pd.Series | None, name: str) -> ReferenceSet:
        data = frame[list(F.FEATURE_COLUMNS)].copy()
        churn_rows = 0
        if churn is not None:
            data[F.LABEL_COLUMN] = churn.map({True: "Yes", False: "No"}).astype(object).to_numpy()
            churn_rows = int(churn.fillna(False).astype(bool).sum())
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as handle:
            handle.write(data.to_csv(index=False).encode())
        record = ReferenceSet(uuid.uuid4().hex, name, len(data), churn_rows, utcnow())
        with self.engine.begin() as connection:
            connection.execute(reference_sets.insert().values(
                **dataclasses.asdict(record), csv_gzip=buffer.getvalue()))
        return record

    def load(self, dataset_id: str) -> tuple[ReferenceSet, TelcoCsv] | None:
        """The stored set as parsed again (`.frame`, and `.churn` for labelled uploads)."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(reference_sets).where(
                reference_sets.c.dataset_id == dataset_id)).mappings().first()
        if row is None:
            return None
        data = gzip.decompress(row["csv_gzip"])
        parsed = parse_telco_csv(data, None, row["rows"] + 1)
        record = ReferenceSet(row["dataset_id"], row["name"], row["rows"], row["churn_rows"],
                              aware(row["created_at"]))
        return record, parsed
