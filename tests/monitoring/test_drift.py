"""Drift through GetDriftReport against the production version's training reference: unshifted held-out rows
(never the reference rows themselves) drift nowhere; tenure and MonthlyCharges ×1.5 plus a skewed Contract drift
exactly those columns. HTML is Evidently's page, JSON parses with per-column results and the share."""
from __future__ import annotations

import json

import pytest
from churn.v1 import common_pb2, monitoring_pb2

from tests.monitoring.conftest import records, service_md

WINDOW = 500


def _log_window(monitoring, version, customers, prefix):
    monitoring.stub.RecordPredictions(monitoring_pb2.RecordPredictionsRequest(
        records=records(customers, version, prefix)), metadata=service_md(monitoring))


def _report(monitoring, version, fmt):
    return monitoring.stub.GetDriftReport(monitoring_pb2.GetDriftReportRequest(
        window=WINDOW, format=fmt, model_version=version), metadata=monitoring.md(), timeout=120)


@pytest.fixture(scope="module")
def production(versions):
    return versions["production"]


def test_unshifted_holdout_window_has_no_drift(monitoring, production):
    _log_window(monitoring, production.number, production.holdout.customers()[:WINDOW], "nodrift")
    reply = _report(monitoring, production.number, "json")
    summary = reply.summary
    assert not summary.dataset_drift and summary.drifted_columns == 0 and summary.drift_share == 0.0
    assert summary.current_rows == WINDOW and summary.reference_rows > 4000
    assert summary.model_version == production.number and summary.columns == 19
    assert reply.report.content_type == "application/json"
    document = json.loads(reply.report.data)
    assert document["dataset_drift"] is False and document["drift_share"] == 0.0
    assert set(document["by_column"]) == {c.column for c in summary.by_column}
    assert document["by_column"]["tenure"]["drifted"] is False and "evidently" in document


def test_shifted_window_drifts_in_the_shifted_columns(monitoring, production):
    shifted = []
    for i, customer in enumerate(production.holdout.customers()[WINDOW:2 * WINDOW]):
        c = common_pb2.Customer()
        c.CopyFrom(customer)
        c.tenure = round(customer.tenure * 1.5)
        c.monthly_charges = customer.monthly_charges * 1.5
        if i % 5:  # 80% two-year contracts (about a quarter in the training data)
            c.contract = common_pb2.CONTRACT_TWO_YEAR
        shifted.append(c)
    _log_window(monitoring, production.number, shifted, "drift")
    reply = _report(monitoring, production.number, "json")
    drifted = {c.column for c in reply.summary.by_column if c.drifted}
    assert drifted == {"tenure", "MonthlyCharges", "Contract"}
    assert reply.summary.drifted_columns == 3
    assert reply.summary.drift_share == pytest.approx(3 / 19)
    document = json.loads(reply.report.data)
    assert document["by_column"]["MonthlyCharges"]["drifted"] is True
    assert document["by_column"]["MonthlyCharges"]["score"] > document["by_column"]["MonthlyCharges"]["threshold"]

    html = _report(monitoring, production.number, "html")
    assert html.report.content_type.startswith("text/html")
    page = html.report.data.decode()
    assert page.lstrip().lower().startswith("<!doctype html")
    # Evidently's own dashboard: its renderer bootstraps the page and its widgets title the drift table
    assert "drawDashboard" in page and "Share of Drifted Columns" in page
    assert html.summary.drifted_columns == 3
