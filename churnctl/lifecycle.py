"""churnctl's model-lifecycle commands: retrain (followed to the end with a progress bar), training-run, promote,
rollback, events, predictions and `canary analyze`. Each is one MonitoringService RPC (admin, ops key) through the
gateway; results go to stdout, progress and messages to stderr."""
from __future__ import annotations

import datetime as dt
import time
from typing import Optional

import typer
from google.protobuf import timestamp_pb2
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churn.v1 import monitoring_pb2 as M
from churnctl.output import err, out, print_json
from churnctl.session import CliError, Client, current_client

MAX_PAGE = 1000  # ListPredictions / ListModelEvents refuse larger pages


def _time(value: Optional[str], option: str):
    """An ISO-8601 time (a naive one is UTC) as a protobuf Timestamp."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CliError(f"{option}: not an ISO-8601 time (e.g. 2026-11-30T14:00:00Z): {value[:40]!r}") from None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc))
    return stamp


def _when(stamp) -> str:
    return stamp.ToDatetime(tzinfo=dt.timezone.utc).isoformat(timespec="seconds") if stamp.seconds else ""


def _state(run: M.TrainingRun) -> str:
    return M.TrainingState.Name(run.state).removeprefix("TRAINING_STATE_")


def follow(cli: Client, run_id: str, poll_seconds: float) -> M.TrainingRun:
    """GetTrainingRun every `poll_seconds` with a progress bar until the run is no longer RUNNING."""
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TextColumn("{task.fields[message]}"))
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(f"training {run_id[:8]}", total=1.0, message="")
        while True:
            run = cli.call(cli.monitoring, "GetTrainingRun", M.GetTrainingRunRequest(run_id=run_id)).run
            progress.update(task, completed=run.progress, message=run.message[:60])
            if run.state != M.TRAINING_STATE_RUNNING:
                return run
            time.sleep(poll_seconds)


def retrain(dataset: list[str] = typer.Option([], "--dataset", "-d", help="an UploadTrainingData id (repeatable)"),
            shipped: bool = typer.Option(False, "--shipped", help="train on the shipped Telco data too"),
            feedback: bool = typer.Option(False, "--feedback", help="and on feedback-labelled predictions"),
            flavor: str = typer.Option("", help="xgboost (the default) or sklearn"),
            wait: bool = typer.Option(True, "--wait/--no-wait", help="follow the run until it finishes"),
            poll: float = typer.Option(2.0, min=0.2, help="seconds between status checks")):
    """Train a candidate (registered as staging) and follow it to the end; exit 1 if it fails."""
    cli = current_client()
    request = M.RetrainRequest(include_shipped_data=shipped, dataset_ids=dataset, include_feedback=feedback,
                               flavor=flavor)
    run = cli.call(cli.monitoring, "Retrain", request).run
    err.print(f"training run {run.run_id} started from production version {run.parent_version or 'none'} "
              f"on {run.rows} rows")
    if wait:
        run = follow(cli, run.run_id, poll)
    print_json(run)
    if run.state == M.TRAINING_STATE_FAILED:
        raise CliError(f"training run {run.run_id} failed: {run.error}")
    if run.state == M.TRAINING_STATE_SUCCEEDED:
        err.print(f"version {run.model_version} registered as staging")


def training_run(run_id: str = typer.Argument(..., help="the run id Retrain answered")):
    """A training run's state, progress, version, metrics and lineage."""
    cli = current_client()
    run = cli.call(cli.monitoring, "GetTrainingRun", M.GetTrainingRunRequest(run_id=run_id)).run
    print_json(run)
    err.print(f"{_state(run)} {run.progress:.0%}" + (f": version {run.model_version}" if run.model_version else ""))


def promote(version: str = typer.Option("", "--version", help="the staging version you looked at (a guard: "
                                        "refused if staging is another one)")):
    """Make the staging version production (production's version becomes previous); the canary goes to 0."""
    cli = current_client()
    reply = cli.call(cli.monitoring, "Promote", M.PromoteRequest(version=version), timeout=120)
    print_json(reply)
    err.print(f"production is version {reply.production_version}" + ("" if reply.changed else " (unchanged)"))


def rollback():
    """Make the previous version production again; the canary goes to 0."""
    cli = current_client()
    reply = cli.call(cli.monitoring, "Rollback", M.RollbackRequest(), timeout=120)
    print_json(reply)
    err.print(f"production is version {reply.production_version}" + ("" if reply.changed else " (unchanged)"))


def events(limit: int = typer.Option(20, min=1, help="how many, newest first")):
    """The lifecycle audit trail: retrains, promotions, rollbacks and canary weight changes."""
    cli = current_client()
    table = Table("id", "at", "kind", "actor", "version", "previous", "canary %", "detail")
    request = M.ListModelEventsRequest()
    while True:
        request.page_size = min(MAX_PAGE, limit - table.row_count)
        page = cli.call(cli.monitoring, "ListModelEvents", request)
        for event in page.events:
            table.add_row(str(event.event_id), _when(event.at),
                          M.ModelEventKind.Name(event.kind).removeprefix("MODEL_EVENT_KIND_").lower(), event.actor,
                          event.model_version, event.previous_version,
                          str(event.canary_percent) if event.kind == M.MODEL_EVENT_KIND_CANARY_WEIGHT else "",
                          event.detail)
        request.page_token = page.next_page_token
        if not request.page_token or table.row_count >= limit:
            break
    out.print(table)


def predictions(customer_id: str = typer.Option("", "--customer-id"),
                model_version: str = typer.Option("", "--model-version"),
                alias: str = typer.Option("", help="production or staging"),
                shadow: Optional[bool] = typer.Option(None, "--shadow/--no-shadow", help="only mirrored / only "
                                                      "served predictions (default: both)"),
                since: Optional[str] = typer.Option(None, help="ISO-8601 start time (UTC if no zone)"),
                until: Optional[str] = typer.Option(None, help="ISO-8601 end time"),
                limit: int = typer.Option(20, min=1, help="how many, newest first")):
    """The prediction log, filtered, with the feedback label where one arrived."""
    cli = current_client()
    request = M.ListPredictionsRequest(customer_id=customer_id, model_version=model_version, alias=alias,
                                       start_time=_time(since, "--since"), end_time=_time(until, "--until"))
    if shadow is not None:
        request.shadow = shadow
    table = Table("predicted at", "customer", "P(churn)", "churn", "version", "alias", "label", "prediction id")
    while True:
        request.page_size = min(MAX_PAGE, limit - table.row_count)
        page = cli.call(cli.monitoring, "ListPredictions", request)
        for logged in page.predictions:
            record = logged.record
            label = ("yes" if logged.actual_churn else "no") if logged.HasField("actual_churn") else ""
            table.add_row(_when(record.predicted_at), record.customer.customer_id, f"{record.probability:.4f}",
                          "yes" if record.churn else "no", record.model.version, record.model.alias, label,
                          record.prediction_id)
        request.page_token = page.next_page_token
        if not request.page_token or table.row_count >= limit:
            break
    out.print(table)


def canary_analyze(window_minutes: int = typer.Option(0, "--window-minutes", help="0 = the server's default")):
    """Compare staging with production over the window: the verdict, its reasons and each side's figures."""
    cli = current_client()
    reply = cli.call(cli.monitoring, "AnalyzeCanary", M.AnalyzeCanaryRequest(window_minutes=window_minutes))
    table = Table("", "version", "predictions", "error rate", "p50 ms", "p99 ms", "mean P", "labelled", "accuracy",
                  "ROC AUC")
    for name, side in (("production", reply.production), ("staging", reply.staging)):
        def optional(field: str) -> str:
            return f"{getattr(side, field):.3f}" if side.HasField(field) else "-"
        table.add_row(name, side.model.version, str(side.predictions), optional("error_rate"),
                      f"{side.latency_p50_ms:.1f}", f"{side.latency_p99_ms:.1f}", f"{side.mean_probability:.3f}",
                      str(side.labelled), optional("accuracy"), optional("roc_auc"))
    out.print(table)
    out.print(f"Jensen-Shannon {reply.jensen_shannon:.3f}, PSI {reply.psi:.3f}")
    out.print(f"verdict: {M.CanaryVerdict.Name(reply.verdict).removeprefix('CANARY_VERDICT_')}")
    for reason in reply.reasons:
        out.print(f"  {reason}", highlight=False)


def register(app: typer.Typer, canary_app: typer.Typer) -> None:
    app.command()(retrain)
    app.command("training-run")(training_run)
    app.command()(promote)
    app.command()(rollback)
    app.command()(events)
    app.command()(predictions)
    canary_app.command("analyze")(canary_analyze)
