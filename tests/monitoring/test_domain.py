"""Domain code as plain Python (no gRPC): feedback CSV parsing, quality metrics, request checks, the canary's
runtime arithmetic and the disk layer's atomic snapshots."""
from __future__ import annotations

import pytest

from services.common import canary_runtime as CR
from services.common.errors import FailedPrecondition, InvalidInput, ResourceExhausted
from services.monitoring import canary, drift, feedback
from services.monitoring.metrics import quality
from services.monitoring.store import LabelledRow, utcnow


def test_feedback_csv_by_customer_with_extra_columns_and_bom():
    data = "\ufeffcustomerID,gender,Churn\r\nc-1,Male,Yes\r\nc-2,Female,no\r\n\r\nc-3,Male,\r\n".encode()
    rows, errors = feedback.rows_from_csv(data, max_rows=10)
    assert [(r.row, r.customer_id, r.prediction_id, r.churned) for r in rows] == [(2, "c-1", "", True),
                                                                                  (3, "c-2", "", False)]
    assert errors == [(5, "Churn", "must be Yes or No, got ''")]


def test_feedback_csv_whole_request_problems():
    with pytest.raises(InvalidInput) as no_label:
        feedback.rows_from_csv(b"prediction_id\np1\n", 10)
    assert no_label.value.field == "csv line 1" and "Churn" in no_label.value.reason
    with pytest.raises(ResourceExhausted):
        feedback.rows_from_csv(b"prediction_id,Churn\n" + b"p,Yes\n" * 11, 10)
    with pytest.raises(InvalidInput) as quoted:
        feedback.rows_from_csv(b'prediction_id,Churn\n"p1,Yes\n', 10)
    assert quoted.value.field.startswith("csv")


# (probability, churned): threshold 0.5 gives TP 3 (0.9, 0.8, 0.6), FP 2 (0.7, 0.55), FN 1 (0.4), TN 3.
LABELLED = [(0.9, True), (0.8, True), (0.7, False), (0.6, True), (0.55, False), (0.4, True), (0.3, False),
            (0.2, False), (0.1, False)]


def test_quality_of_a_labelled_set_computed_by_hand():
    now = utcnow()
    rows = [LabelledRow(str(i), "", p >= 0.5, p, churned, "m", "1", "production", now, now)
            for i, (p, churned) in enumerate(LABELLED)]
    # accuracy (3 + 3) / 9; precision 3 / (3 + 2); recall 3 / (3 + 1); ROC AUC: of the 4 x 5 (churned, stayed)
    # pairs, the churned row scores higher in 5 + 5 + 4 + 3 = 17; F1 = 2 * 0.6 * 0.75 / (0.6 + 0.75) = 2 / 3
    assert quality(rows) == pytest.approx({"accuracy": 6 / 9, "precision": 0.6, "recall": 0.75, "f1": 2 / 3,
                                           "roc_auc": 0.85}, abs=1e-15)
    one_class = [LabelledRow("x", "", True, 0.9, True, "m", "1", "", now, now)]
    assert quality(one_class) == {"accuracy": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert quality([]) == {}


@pytest.mark.parametrize("window, fmt, field", [(-1, "html", "window"), (100_001, "json", "window"),
                                                (0, "html", "window"), (10, "csv", "format"), (10, "HTML ", None),
                                                (None, "", None)])
def test_drift_request_checks(window, fmt, field):
    if field is None:
        expected_window = drift.DEFAULT_WINDOW if window is None else window
        assert drift.check_request(window, fmt) == (expected_window, fmt.strip().lower() or "html")
    else:
        with pytest.raises(InvalidInput) as caught:
            drift.check_request(window, fmt)
        assert caught.value.field == field


def test_weight_from_runtime_normalizes_and_explains_missing_keys():
    assert canary.weight_from_runtime({CR.PRODUCTION_KEY: "70", CR.STAGING_KEY: "30"}) == 30
    assert canary.weight_from_runtime({CR.PRODUCTION_KEY: "3", CR.STAGING_KEY: "1"}) == 25
    assert canary.weight_from_runtime({CR.PRODUCTION_KEY: "0", CR.STAGING_KEY: "0"}) == 0
    with pytest.raises(FailedPrecondition) as caught:
        canary.weight_from_runtime({})
    assert CR.STAGING_KEY in caught.value.message


def test_disk_layer_snapshots_are_swapped_atomically_and_pruned(tmp_path):
    assert CR.read_persisted(tmp_path) is None
    assert CR.ensure_persisted(tmp_path, 10) == 10
    for percent in (20, 30, 40, 50):
        CR.write_persisted(tmp_path, percent)
    link = CR.symlink_root(tmp_path)
    assert link.is_symlink() and not link.readlink().is_absolute()
    assert CR.key_path(link, CR.PRODUCTION_KEY).read_text() == "50\n"
    assert CR.read_persisted(tmp_path) == 50 and CR.ensure_persisted(tmp_path, 10) == 50
    assert len(list((CR.runtime_dir(tmp_path) / CR.SNAPSHOTS).iterdir())) <= CR.KEEP_SNAPSHOTS
    with pytest.raises(ValueError):
        CR.weights_for(101)
    with pytest.raises(InvalidInput):
        canary.check_percent(-1)
