"""Timestamps the protobuf library refuses (found by the fuzzer: nanos -1332) are the caller's mistake, named —
never an INTERNAL from `ToDatetime` — in ListPredictions' filters and in a prediction record."""
from __future__ import annotations

import pytest
from churn.v1 import monitoring_pb2

from services.common.errors import InvalidInput
from services.common.prediction_record import problems
from services.monitoring.servicer import _time


@pytest.mark.parametrize("seconds,nanos", [(10, -1332), (10, 1_000_000_000), (-62135596801, 0), (253402300800, 0)])
def test_list_predictions_names_an_invalid_time_filter(seconds, nanos):
    request = monitoring_pb2.ListPredictionsRequest()
    request.end_time.seconds, request.end_time.nanos = seconds, nanos
    with pytest.raises(InvalidInput) as caught:
        _time(request, "end_time")
    assert caught.value.field == "end_time"
    assert _time(monitoring_pb2.ListPredictionsRequest(), "end_time") is None


def test_a_record_with_an_invalid_time_breaks_a_rule():
    record = monitoring_pb2.PredictionRecord(prediction_id="p")
    record.predicted_at.seconds, record.predicted_at.nanos = 10, -1332
    assert ("records[0].predicted_at", "is not a valid timestamp (years 1-9999, nanos 0-999,999,999)") in \
        problems(record, "records[0]")
