"""Where MLflow lives, decided once for training, inference and monitoring.

`MLFLOW_TRACKING_URI` wins when set (a server or a database URL); otherwise a SQLite file `<DATA_DIR>/mlflow.db`
(registry included) with artifacts under the ABSOLUTE folder `<DATA_DIR>/mlartifacts`, so a process started from
any working directory finds the same files. `DATA_DIR` defaults to `<repo>/var`. mlflow is imported lazily: it
takes seconds, and importing this module must stay cheap.
"""
from __future__ import annotations

import logging
import os
import pathlib

from services.common.settings import data_dir_from

DEFAULT_EXPERIMENT = "churn"


def quiet() -> None:
    """Silence MLflow's chatter (alembic migrations, git probing, registry INFO lines) for CLI and services."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def data_dir(env: os._Environ | dict | None = None) -> pathlib.Path:
    return data_dir_from(os.environ if env is None else env)


def tracking_uri(data_dir_: pathlib.Path | None = None, env: dict | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<data_dir>/mlflow.db` (the folder is created)."""
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    folder = data_dir_ or data_dir(env)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_root(data_dir_: pathlib.Path | None = None) -> pathlib.Path:
    """Absolute artifact folder for experiments created against a database URI (created if missing)."""
    folder = (data_dir_ or data_dir()) / "mlartifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def configure(data_dir_: pathlib.Path | None = None) -> str:
    """Point the mlflow module (tracking and registry) at our location; returns the tracking URI."""
    import mlflow

    quiet()
    uri = tracking_uri(data_dir_)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(data_dir_: pathlib.Path | None = None):
    """An MlflowClient for our location (tracking and registry on the same URI)."""
    from mlflow import MlflowClient

    uri = configure(data_dir_)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(name: str | None = None, data_dir_: pathlib.Path | None = None) -> str:
    """The experiment's id, creating it with an absolute artifact location unless a tracking server decides."""
    import mlflow

    uri = configure(data_dir_)
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None if uri.startswith(("http://", "https://", "databricks")) else \
        artifact_root(data_dir_).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
