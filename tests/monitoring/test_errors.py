"""The bad-input table: every caller mistake gets a clear status naming the field, never INTERNAL (the autouse
guard in tests/conftest.py fails any test here that causes one)."""
from __future__ import annotations

import grpc
import pytest
from churn.v1 import common_pb2, monitoring_pb2
from google.api import httpbody_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.monitoring.conftest import TELCO_CSV, records, service_md

M = monitoring_pb2
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def csv(text: str | bytes) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type="text/csv", data=text.encode() if isinstance(text, str) else text)


def telco_lines(count: int) -> list[str]:
    return TELCO_CSV.read_text().splitlines()[:count + 1]


def _bad_contract() -> str:
    lines = telco_lines(3)
    lines[2] = lines[2].replace("Month-to-month", "Weekly").replace("One year", "Weekly").replace("Two year", "Weekly")
    return "\n".join(lines)


def _no_churn_column() -> str:
    return "\n".join(",".join(line.split(",")[:-1]) for line in telco_lines(3))


def _blank_label() -> str:
    lines = telco_lines(3)
    lines[3] = lines[3].rsplit(",", 1)[0] + ","
    return "\n".join(lines)


# (rpc, request, expected code, field named in BadRequest (or text in the message))
CASES = {
    "feedback: nothing sent": ("SubmitFeedback", M.SubmitFeedbackRequest(), INVALID, "rows"),
    "feedback: empty CSV": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv("")), INVALID, "csv"),
    "feedback: blank CSV": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv(" \n\n")), INVALID, "csv"),
    "feedback: not UTF-8": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv(b"prediction_id,Churn\n\xff\xfe,Yes\n")),
                            INVALID, "csv line 2"),
    "feedback: no label column": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv("prediction_id,label\np1,Yes\n")),
                                  INVALID, "csv line 1"),
    "feedback: no id column": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv("id,Churn\np1,Yes\n")),
                               INVALID, "csv line 1"),
    "feedback: header only": ("SubmitFeedback", M.SubmitFeedbackRequest(csv=csv("prediction_id,Churn\n")),
                              INVALID, "csv"),
    "feedback: rows and CSV": ("SubmitFeedback", M.SubmitFeedbackRequest(
        rows=[M.FeedbackRow(prediction_id="p", churned=True)], csv=csv("prediction_id,Churn\np,Yes\n")),
        INVALID, "csv"),
    "feedback data: negative limit": ("GetFeedbackData", M.GetFeedbackDataRequest(limit=-1), INVALID, "limit"),
    "feedback data: huge limit": ("GetFeedbackData", M.GetFeedbackDataRequest(limit=10_001), INVALID, "limit"),
    "drift: zero window": ("GetDriftReport", M.GetDriftReportRequest(window=0), INVALID, "window"),
    "drift: negative window": ("GetDriftReport", M.GetDriftReportRequest(window=-1), INVALID, "window"),
    "drift: huge window": ("GetDriftReport", M.GetDriftReportRequest(window=100_001), INVALID, "window"),
    "drift: bad format": ("GetDriftReport", M.GetDriftReportRequest(format="pdf"), INVALID, "format"),
    "drift: unknown version": ("GetDriftReport", M.GetDriftReportRequest(model_version="999"), NOT_FOUND, "999"),
    "drift: version not a number": ("GetDriftReport", M.GetDriftReportRequest(model_version="latest"), NOT_FOUND,
                                    "latest"),
    "drift: unknown reference": ("GetDriftReport", M.GetDriftReportRequest(reference_id="no-such-set"), NOT_FOUND,
                                 "no-such-set"),
    "canary: 101": ("SetCanaryWeight", M.SetCanaryWeightRequest(percent=101), INVALID, "percent"),
    "canary: -1": ("SetCanaryWeight", M.SetCanaryWeightRequest(percent=-1), INVALID, "percent"),
    "upload: empty": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv("")), INVALID, "csv"),
    "upload: not UTF-8": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv(b"customerID,gender\n\xff\n")),
                          INVALID, "csv line 2"),
    "upload: bad value": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv(_bad_contract())), INVALID,
                          "csv line 3: Contract"),
    "upload: missing columns": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv("customerID,Churn\na,Yes\n")),
                                INVALID, "csv line 1"),
    "upload: no labels": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv(_no_churn_column())), INVALID,
                          "csv line 1"),
    "upload: blank label": ("UploadTrainingData", M.UploadTrainingDataRequest(csv=csv(_blank_label())), INVALID,
                            "csv line 4: Churn"),
    "record: empty batch": ("RecordPredictions", M.RecordPredictionsRequest(), INVALID, "records"),
    # a bad record inside a batch is dead-lettered, not refused with its batch: tests/monitoring/test_dead_letters.py
}


def _fields(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gets_a_clear_error(monitoring, case):
    method, request, code, named = CASES[case]
    md = service_md(monitoring) if method == "RecordPredictions" else monitoring.md()
    with pytest.raises(grpc.RpcError) as caught:
        getattr(monitoring.stub, method)(request, metadata=md, timeout=60)
    error = caught.value
    assert error.code() == code, f"{case}: {error.code()} {error.details()}"
    if code == INVALID:
        assert named in _fields(error), f"{case}: fields {_fields(error)}, message {error.details()}"
    else:
        assert named in error.details()


def test_too_few_rows_is_failed_precondition_with_counts(fresh, versions):
    production = versions["production"].number
    fresh.stub.RecordPredictions(M.RecordPredictionsRequest(records=records(
        versions["production"].holdout.customers()[:12], production, "few")), metadata=service_md(fresh))
    with pytest.raises(grpc.RpcError) as caught:
        fresh.stub.GetDriftReport(M.GetDriftReportRequest(model_version=production), metadata=fresh.md())
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "holds 12 logged inputs" in caught.value.details() and "at least 50" in caught.value.details()
    with pytest.raises(grpc.RpcError) as empty:
        fresh.stub.GetDriftReport(M.GetDriftReportRequest(model_version=versions["staging"].number),
                                  metadata=fresh.md())
    assert empty.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "holds 0" in empty.value.details()


def test_record_predictions_needs_the_service_role(monitoring):
    request = M.RecordPredictionsRequest(records=[M.PredictionRecord(
        prediction_id="role", model=common_pb2.ModelRef(name="m", version="1"))])
    for role in ("agent", "admin"):
        with pytest.raises(grpc.RpcError) as caught:
            monitoring.stub.RecordPredictions(request, metadata=monitoring.md(role=role, ops=False))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_ops_routes_refuse_the_client_key_and_agents(monitoring):
    with pytest.raises(grpc.RpcError) as client_key:
        monitoring.stub.SetCanaryWeight(M.SetCanaryWeightRequest(percent=5), metadata=monitoring.md(ops=False))
    assert client_key.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as agent:
        monitoring.stub.GetDriftReport(M.GetDriftReportRequest(), metadata=monitoring.md(role="agent"))
    assert agent.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_envoy_admin_down_is_unavailable_and_the_weight_is_persisted(monitoring):
    from services.common import canary_runtime

    with pytest.raises(grpc.RpcError) as caught:
        monitoring.stub.SetCanaryWeight(M.SetCanaryWeightRequest(percent=40), metadata=monitoring.md())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "persisted" in caught.value.details() and "unreachable" in caught.value.details()
    assert canary_runtime.read_persisted(monitoring.app.parts.canary.data_dir) == 40
    with pytest.raises(grpc.RpcError) as read:
        monitoring.stub.GetCanaryWeight(M.GetCanaryWeightRequest(), metadata=monitoring.md(role="agent", ops=False))
    assert read.value.code() == grpc.StatusCode.UNAVAILABLE

