"""Issue 13 items 6 and 8 at monitoring: a model version that is not a short ASCII number is NOT_FOUND before the
registry is asked (a 20-digit number overflowed SQLite, '²' passed str.isdigit: both were 503), and nothing the
caller sent comes back unbounded."""
from __future__ import annotations

import grpc
import pytest
from churn.v1 import monitoring_pb2

M = monitoring_pb2


@pytest.mark.parametrize("version", ["99999999999999999999", "²", "1²", "٣", "9" * 10_000, " 1 2"])
def test_drift_for_an_impossible_version_is_not_found_never_unavailable(monitoring, version):
    with pytest.raises(grpc.RpcError) as caught:
        monitoring.stub.GetDriftReport(M.GetDriftReportRequest(model_version=version), metadata=monitoring.md(),
                                       timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()[:200]
    assert "versions are numbers" in caught.value.details() and len(caught.value.details()) < 300


def test_a_30kb_format_and_reference_id_come_back_cut(monitoring):
    for request, code in ((M.GetDriftReportRequest(format="p" * 30_000), grpc.StatusCode.INVALID_ARGUMENT),
                          (M.GetDriftReportRequest(reference_id="r" * 30_000), grpc.StatusCode.NOT_FOUND)):
        with pytest.raises(grpc.RpcError) as caught:
            monitoring.stub.GetDriftReport(request, metadata=monitoring.md(), timeout=30)
        assert caught.value.code() == code and len(caught.value.details()) < 300
