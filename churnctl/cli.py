"""`churnctl` commands (typer + rich). Every command calls the gateway over gRPC; see `churnctl --help`."""
from __future__ import annotations

import csv
import getpass
import pathlib
import sys
import time
from typing import Optional

import typer
from google.protobuf import json_format
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from churn.v1 import auth_pb2, common_pb2, inference_pb2, monitoring_pb2
from churnctl import lifecycle
from churnctl.output import err, out, print_json as _print_json
from churnctl.session import CliError, Options, Session, current_client
from services.common import features as F
from services.common.errors import DomainError
from services.common.telco_csv import parse_telco_csv

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
canary_app = typer.Typer(help="The share of prediction traffic Envoy sends to the staging model.")
shadow_app = typer.Typer(help="The share of production's prediction requests Envoy copies to staging (answers "
                                "discarded, logged as shadow rows for the canary analysis).")
users_app = typer.Typer(help="Users (admin).")
app.add_typer(canary_app, name="canary")
app.add_typer(shadow_app, name="shadow")
app.add_typer(users_app, name="users")
lifecycle.register(app, canary_app)
MAX_ROWS = 10_000_000  # a local file: the gateway's limits apply per chunk


@app.callback()
def _global(gateway: Optional[str] = typer.Option(None, envvar="CHURN_GATEWAY", help="host:port of the gateway "
                                                  "(default: from login, else 127.0.0.1:8080)"),
            api_key: Optional[str] = typer.Option(None, envvar="CHURN_API_KEY", help="the client API key"),
            ops_key: Optional[str] = typer.Option(None, envvar="CHURN_OPS_API_KEY", help="the ops API key")):
    Options.gateway, Options.api_key, Options.ops_api_key = gateway, api_key, ops_key


def _customer(text: Optional[str], csv_line: Optional[str]) -> common_pb2.Customer:
    """One customer from proto JSON (`-` reads stdin) or from one CSV row in the Telco spellings and column order
    (customerID first and Churn last are optional)."""
    if (text is None) == (csv_line is None):
        raise CliError("give the customer as JSON or with --csv, not both")
    if csv_line is not None:
        fields = next(csv.reader([csv_line]))
        columns = {len(F.FEATURE_COLUMNS): list(F.FEATURE_COLUMNS),
                   len(F.FEATURE_COLUMNS) + 1: [F.ID_COLUMN, *F.FEATURE_COLUMNS],
                   len(F.FEATURE_COLUMNS) + 2: [F.ID_COLUMN, *F.FEATURE_COLUMNS, F.LABEL_COLUMN]}.get(len(fields))
        if columns is None:
            raise CliError(f"--csv has {len(fields)} fields; expected the {len(F.FEATURE_COLUMNS)} feature columns "
                           f"({', '.join(F.FEATURE_COLUMNS)}), optionally with customerID first and Churn last")
        data = (",".join(columns) + "\n" + csv_line + "\n").encode()
        try:
            return parse_telco_csv(data, None, 1).customers()[0]
        except DomainError as error:
            raise CliError(f"--csv: {error}") from None
    raw = sys.stdin.read() if text == "-" else text
    try:
        return json_format.Parse(raw, common_pb2.Customer())
    except json_format.ParseError as error:
        raise CliError(f"customer JSON: {str(error)[:300]}") from None


@app.command()
def login(username: str = typer.Option(..., "--username", "-u"),
          password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin")):
    """Log in; the token is cached 0600 in your config dir (with the gateway and keys given here)."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("password: ")
    cli = current_client()
    reply = cli.call(cli.auth, "Login", auth_pb2.LoginRequest(username=username, password=password),
                     with_token=False, timeout=15)
    path = Session(gateway=cli.gateway, api_key=cli.api_key, ops_api_key=cli.ops_api_key, token=reply.access_token,
                   expires_at=time.time() + reply.expires_in, username=username).save()
    err.print(f"logged in as {username} ({common_pb2.Role.Name(reply.role)}); token cached in {path}")


@app.command()
def predict(customer: Optional[str] = typer.Argument(None, help="proto JSON of one Customer, or - for stdin"),
            csv_line: Optional[str] = typer.Option(None, "--csv", help="one Telco CSV row instead of JSON"),
            explain_top_k: int = typer.Option(0, "--reasons", help="top SHAP reasons to include")):
    """Score one customer."""
    cli = current_client()
    request = inference_pb2.PredictRequest(customer=_customer(customer, csv_line), explain_top_k=explain_top_k)
    _print_json(cli.call(cli.inference, "Predict", request).prediction)


@app.command()
def explain(customer: Optional[str] = typer.Argument(None, help="proto JSON of one Customer, or - for stdin"),
            csv_line: Optional[str] = typer.Option(None, "--csv", help="one Telco CSV row instead of JSON")):
    """Every feature's SHAP contribution for one customer."""
    cli = current_client()
    _print_json(cli.call(cli.inference, "Explain",
                         inference_pb2.ExplainRequest(customers=[_customer(customer, csv_line)])))


@app.command()
def score(path: pathlib.Path = typer.Argument(..., exists=True, dir_okay=False, help="a Telco-format CSV"),
          output: pathlib.Path = typer.Option(..., "--out", "-o", help="where to write the scored CSV"),
          chunk: int = typer.Option(500, min=1, max=5000, help="rows per PredictBatch call")):
    """Score a CSV file in chunks (one PredictBatch each) and write customerID, churn, probability and model."""
    try:
        table = parse_telco_csv(path.read_bytes(), None, MAX_ROWS)
    except DomainError as error:
        raise CliError(f"{path}: {error}") from None
    customers = table.customers()
    cli = current_client()
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
    tmp = output.with_name(output.name + ".part")
    with tmp.open("w", newline="") as handle, Progress(*columns, console=err) as progress:
        writer = csv.writer(handle)
        writer.writerow([F.ID_COLUMN, "Churn", "probability", "model_version", "alias", "prediction_id"])
        task = progress.add_task(f"scoring {path.name}", total=len(customers))
        for start in range(0, len(customers), chunk):
            batch = cli.call(cli.inference, "PredictBatch",
                             inference_pb2.PredictBatchRequest(customers=customers[start:start + chunk]))
            for row in batch.predictions:
                writer.writerow([row.customer_id, "Yes" if row.churn else "No", f"{row.probability:.6f}",
                                 row.model.version, row.model.alias, row.prediction_id])
            progress.advance(task, len(batch.predictions))
    tmp.replace(output)
    err.print(f"{len(customers)} rows scored into {output}")


@app.command("drift-report")
def drift_report(output: pathlib.Path = typer.Option(..., "--out", "-o"),
                 report_format: str = typer.Option("html", "--format", help="html or json"),
                 window: Optional[int] = typer.Option(None, help="the last N logged predictions"),
                 model_version: str = typer.Option("", "--model-version")):
    """Download the Evidently drift report of recent inputs against the training reference."""
    cli = current_client()
    request = monitoring_pb2.GetDriftReportRequest(format=report_format, model_version=model_version)
    if window is not None:
        request.window = window
    reply = cli.call(cli.monitoring, "GetDriftReport", request, timeout=300)
    output.write_bytes(reply.report.data)
    summary = reply.summary
    err.print(f"drift share {summary.drift_share:.3f} ({summary.drifted_columns} columns drifted); "
              f"{len(reply.report.data)} bytes of {reply.report.content_type} in {output}")


def _print_share(method: str, request) -> None:
    """Call one of monitoring's share RPCs (canary weight, shadow percent) and print the percent it answers."""
    cli = current_client()
    out.print(cli.call(cli.monitoring, method, request).percent)


@canary_app.command("get")
def canary_get():
    """Show the staging share in percent."""
    _print_share("GetCanaryWeight", monitoring_pb2.GetCanaryWeightRequest())


@canary_app.command("set")
def canary_set(percent: int = typer.Argument(..., help="0-100")):
    """Send PERCENT of prediction traffic to staging (ops key, admin)."""
    _print_share("SetCanaryWeight", monitoring_pb2.SetCanaryWeightRequest(percent=percent))


@shadow_app.command("get")
def shadow_get():
    """Show the shadow share in percent."""
    _print_share("GetShadowPercent", monitoring_pb2.GetShadowPercentRequest())


@shadow_app.command("set")
def shadow_set(percent: int = typer.Argument(..., help="0-100")):
    """Copy PERCENT of production's prediction requests to staging (ops key, admin)."""
    _print_share("SetShadowPercent", monitoring_pb2.SetShadowPercentRequest(percent=percent))


@users_app.command("list")
def users_list(pending: bool = typer.Option(False, "--pending", help="only users waiting for approval")):
    """List users."""
    cli = current_client()
    reply = cli.call(cli.auth, "ListUsers", auth_pb2.ListUsersRequest(pending_only=pending))
    table = Table("username", "role", "approved", "created")
    for user in reply.users:
        table.add_row(user.username, common_pb2.Role.Name(user.role).removeprefix("ROLE_").lower(),
                      "yes" if user.approved else "no", user.created_at.ToDatetime().isoformat(timespec="seconds"))
    out.print(table)


@users_app.command("approve")
def users_approve(username: str, revoke: bool = typer.Option(False, "--revoke", help="withdraw the approval")):
    """Approve a user (or withdraw the approval)."""
    cli = current_client()
    reply = cli.call(cli.auth, "ApproveUser", auth_pb2.ApproveUserRequest(username=username, approve=not revoke))
    out.print(f"{reply.user.username}: {'approved' if reply.user.approved else 'not approved'}")


@app.command()
def models():
    """Registered model versions with their aliases, training and live metrics."""
    cli = current_client()
    reply = cli.call(cli.monitoring, "ListModelVersions", monitoring_pb2.ListModelVersionsRequest())
    table = Table("version", "aliases", "flavor", "training", "live")
    for version in reply.versions:
        table.add_row(version.version, ", ".join(version.aliases), version.flavor,
                      _metrics(version.training_metrics), _metrics(version.live_metrics))
    out.print(table)


def _metrics(values) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in sorted(values.items()))


def main() -> None:
    try:
        app()
    except CliError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False)
        raise SystemExit(1) from None
