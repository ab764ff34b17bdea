"""Timestamps the protobuf library refuses (found by the fuzzer: nanos -1332) are the caller's mistake, named —
never an INTERNAL from `ToDatetime` — in ListPredictions' filters and in a prediction record."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from churn.v1 import common_pb2, monitoring_pb2

from services.common import features as F
from services.common import prediction_record
from services.common.errors import InvalidInput
from services.monitoring.servicer import _time


@pytest.mark.parametrize("seconds,nanos", [(10, -1332), (10, 1_000_000_000), (-62135596801, 0), (253402300800, 0)])
def test_list_predictions_names_an_invalid_time_filter(seconds, nanos):
    request = monitoring_pb2.ListPredictionsRequest()
    request.end_time.seconds, request.end_time.nanos = seconds, nanos
    with pytest.raises(InvalidInput) as caught:
        _time(request, "end_time")
    assert caught.value.field == "end_time"
    assert _time(monitoring_pb2.ListPredictionsRequest(), "end_time") is None


MODEL = common_pb2.ModelRef(name="churn-model", version="1", alias="production")
BAD_TIME = "is not a valid timestamp (years 1-9999, nanos 0-999,999,999)"


def test_a_record_with_an_invalid_time_breaks_a_rule(versions):
    record = monitoring_pb2.PredictionRecord(prediction_id="p", model=MODEL,
                                             customer=versions["production"].holdout.customers()[0])
    record.predicted_at.seconds, record.predicted_at.nanos = 10, -1332
    log = prediction_record.from_records([record])
    prediction_record.check(log)
    assert log.problems == {0: ("records[0].predicted_at", BAD_TIME)}


def test_a_columnar_record_with_an_invalid_time_breaks_a_rule_on_every_row(versions):
    customers = versions["production"].holdout.customers()[:5]

    def batch(ids):
        return prediction_record.columns_messages(
            ids, [""] * len(ids), np.zeros(len(ids)), np.zeros(len(ids), dtype=bool),
            F.customer_values(customers[:len(ids)])[0], model=MODEL, latency_ms=1.0,
            predicted_at=prediction_record.timestamp(0), request_id="r")[0]
    bad = batch(["p0", "p1", "p2"])
    bad.predicted_at.nanos = -1332
    log = prediction_record.from_batches([batch(["q0", "q1"]), bad])  # rows 2-4 are the bad batch's
    prediction_record.check(log)
    assert log.problems == {2 + i: (f"batches[1][{i}].predicted_at", BAD_TIME) for i in range(3)}


@pytest.mark.parametrize("seconds,nanos", [(0, 0), (1_764_547_200, 123_456_789), (-1, 999_999_999), (-62135596800, 0),
                                           (253402300799, 999_999_999), (-62135596800, 1_000), (10, 999)])
def test_a_record_time_is_what_the_protobuf_library_reads(seconds, nanos):
    """The log reads a record's time without `ToDatetime` (its checks cost more than the rest of a one-row record):
    the same instant, the same UTC time zone, at the edges of the range too."""
    stamp = prediction_record.timestamp(0)
    stamp.seconds, stamp.nanos = seconds, nanos
    moment, valid = prediction_record._when(stamp, True)
    expected = stamp.ToDatetime(tzinfo=dt.timezone.utc)
    assert valid and moment == expected and moment.utcoffset() == expected.utcoffset() == dt.timedelta(0)
    assert moment.tzinfo is dt.timezone.utc
    assert (moment.year, moment.microsecond) == (expected.year, expected.microsecond)


@pytest.mark.parametrize("seconds,nanos", [(10, -1332), (10, 1_000_000_000), (-62135596801, 0), (253402300800, 0)])
def test_a_record_time_the_protobuf_library_refuses_is_refused(seconds, nanos):
    stamp = prediction_record.timestamp(0)
    stamp.seconds, stamp.nanos = seconds, nanos
    with pytest.raises((ValueError, OverflowError)):
        stamp.ToDatetime(tzinfo=dt.timezone.utc)
    assert prediction_record._when(stamp, True) == (None, False)
    assert prediction_record._when(stamp, False) == (None, True)  # an unset time: the receiver stamps it
