"""The store on both backends (SQLite file and the machine's PostgreSQL): the same tests, parametrized."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest

from services.common import features as F
from services.common.telco_csv import parse_telco_csv
from services.monitoring.store import MonitoringStore, PredictionRow
from tests.monitoring.conftest import TELCO_CSV, batch_of


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    store = MonitoringStore(url)
    yield store
    if request.param == "postgresql":  # one database per run: leave it empty for the next parametrized test
        from services.monitoring.store import metadata
        metadata.drop_all(store.engine)
    store.close()


@pytest.fixture(scope="module")
def telco():
    data = TELCO_CSV.read_bytes()
    return parse_telco_csv(data, len(data) + 1, 10**6)


def rows_from(telco, start: int, count: int, version: str = "1", prefix: str = "p") -> list[PredictionRow]:
    frame = telco.frame.iloc[start:start + count]
    out = []
    for i, (_, values) in enumerate(frame.iterrows()):
        inputs = {f.name: (None if pd.isna(values[f.column]) else
                           float(values[f.column]) if f.kind == F.NUMERIC else str(values[f.column]))
                  for f in F.FEATURES}
        out.append(PredictionRow(f"{prefix}{start + i}", telco.customer_ids[start + i], inputs, i % 3 == 0, 0.4,
                                 "churn-model", version, "production", 2.0,
                                 dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i), "r"))
    return out


def test_same_batch_three_times_stores_it_once(store, telco):
    batch = rows_from(telco, 0, 1000)
    assert [store.record_predictions(batch_of(batch)) for _ in range(3)] == [1000, 0, 0]
    assert store.count_predictions() == 1000
    # a batch overlapping the stored one adds only its new rows
    assert store.record_predictions(batch_of(rows_from(telco, 900, 200))) == 100
    assert store.count_predictions() == 1100


def test_recent_inputs_are_the_newest_rows_in_the_reference_frame_shape(store, telco):
    store.record_predictions(batch_of(rows_from(telco, 0, 300, version="1")))
    store.record_predictions(batch_of(rows_from(telco, 300, 100, version="2", prefix="q")))
    window = store.recent_inputs(50, "1")
    assert list(window.columns) == list(F.FEATURE_COLUMNS)
    expected = telco.frame.iloc[250:300].iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(window, expected, check_dtype=True)
    assert len(store.recent_inputs(1000)) == 400
    assert store.count_predictions("2") == 100
    assert store.model_versions() == ["1", "2"]
    assert store.prediction_counts() == {("churn-model", "1", "production"): 300,
                                         ("churn-model", "2", "production"): 100}


def test_feedback_by_prediction_and_latest_of_a_customer(store, telco):
    rows = rows_from(telco, 0, 10)
    store.record_predictions(batch_of(rows))
    again = [PredictionRow(f"later-{r.prediction_id}", r.customer_id, r.inputs, r.churn, 0.9, r.model_name, "2",
                           "staging", 1.0, r.predicted_at, "r2") for r in rows[:3]]
    store.record_predictions(batch_of(again))
    latest = store.latest_prediction_for_customers([rows[0].customer_id, rows[5].customer_id, "nobody"])
    assert latest == {rows[0].customer_id: "later-p0", rows[5].customer_id: "p5"}
    assert store.existing_prediction_ids(["p1", "p2", "missing"]) == {"p1", "p2"}
    store.save_feedback({"p1": True, "p2": False})
    store.save_feedback({"p2": True})  # a corrected label replaces the first
    labelled = store.labelled()
    assert [(r.prediction_id, r.actual_churn) for r in labelled] == [("p2", True), ("p1", True)]
    assert labelled[0].feedback_at.tzinfo is not None
    assert store.labelled(limit=1)[0].prediction_id == "p2"
    assert store.labelled(model_version="2") == []


def test_reference_set_round_trip(store, telco):
    record = store.references.save(telco.frame.iloc[:500], telco.churn.iloc[:500], "first upload")
    assert record.rows == 500 and record.churn_rows == int(telco.churn.iloc[:500].sum())
    loaded, parsed = store.references.load(record.dataset_id)
    assert loaded.name == "first upload" and loaded.rows == 500
    pd.testing.assert_frame_equal(parsed.frame, telco.frame.iloc[:500].reset_index(drop=True))
    assert parsed.churn.tolist() == telco.churn.iloc[:500].tolist()
    assert store.references.load("unknown") is None


def test_list_predictions_filters_pages_and_returns_inputs_with_labels(store, telco):
    from services.monitoring.store import PredictionFilter

    rows = rows_from(telco, 0, 30)
    shadow = [dataclasses.replace(r, prediction_id=f"s{i}", model_version="3", model_alias="staging", shadow=True)
              for i, r in enumerate(rows[:5])]
    store.record_predictions(batch_of(rows + shadow))
    store.save_feedback({"p2": True})
    newest = store.list_predictions(PredictionFilter(), 10)
    assert [r.row.prediction_id for r in newest[:6]] == ["s4", "s3", "s2", "s1", "s0", "p29"]
    assert store.list_predictions(PredictionFilter(shadow=True), 100)[0].row.shadow is True
    assert len(store.list_predictions(PredictionFilter(shadow=False), 100)) == 30
    assert len(store.list_predictions(PredictionFilter(model_version="3", alias="staging"), 100)) == 5
    one = store.list_predictions(PredictionFilter(customer_id=rows[2].customer_id, shadow=False), 100)
    assert [(r.row.prediction_id, r.actual_churn) for r in one] == [("p2", True)]
    assert one[0].row.inputs == rows[2].inputs
    window = PredictionFilter(start=rows[10].predicted_at, end=rows[13].predicted_at, shadow=False)
    assert [r.row.prediction_id for r in store.list_predictions(window, 100)] == ["p12", "p11", "p10"]
    page = store.list_predictions(PredictionFilter(shadow=False, before_seq=newest[5].seq), 3)
    assert [r.row.prediction_id for r in page] == ["p28", "p27", "p26"]
    frame, churn = store.labelled_inputs()
    assert len(frame) == 1 and churn.tolist() == [True] and list(frame.columns) == list(F.FEATURE_COLUMNS)


def test_a_store_from_before_the_shadow_column_gets_it(tmp_path, telco):
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    MonitoringStore(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE predictions DROP COLUMN shadow"))
    engine.dispose()
    store = MonitoringStore(url)
    assert store.record_predictions(batch_of(rows_from(telco, 0, 3))) == 3
    store.close()


def test_shadow_rows_pair_with_the_answer_they_copy_and_never_take_its_label(store, telco):
    answers = [dataclasses.replace(r, prediction_id=f"req{i}-0", request_id=f"req{i}", model_alias="production",
                                   probability=0.2) for i, r in enumerate(rows_from(telco, 0, 4))]
    copies = [dataclasses.replace(r, prediction_id=f"req{i}-shadow-0", model_version="3", model_alias="staging",
                                  probability=0.7, latency_ms=9.0, shadow=True) for i, r in enumerate(answers)]
    orphan = dataclasses.replace(copies[0], prediction_id="gone-shadow-0", request_id="gone")
    store.record_predictions(batch_of(answers + copies[:3] + [orphan]))  # the 4th copy has not arrived
    latest = store.latest_prediction_for_customers(r.customer_id for r in answers)
    assert latest == {r.customer_id: r.prediction_id for r in answers}  # the answer, not its later shadow copy
    store.save_feedback({"req1-0": True})
    since = answers[0].predicted_at - dt.timedelta(days=1)
    pairs = store.shadow_pairs_since("3", "1", since)
    assert len(pairs) == 3 and set(pairs["staging_probability"]) == {0.7}
    assert set(pairs["production_probability"]) == {0.2}
    assert pairs["actual_churn"].tolist().count(True) == 1 and set(pairs["staging_latency_ms"]) == {9.0}
    assert store.shadow_pairs_since("3", "2", since).empty  # production's answers came from version 1
    assert len(store.scores_since("staging", "3", since, shadow=True)) == 4
    assert store.scores_since("staging", "3", since).empty  # staging served nothing itself
    assert len(store.recent_inputs(100)) == 4 and len(store.recent_inputs(100, "3")) == 4  # no input counted twice
