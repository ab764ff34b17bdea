"""Where MLflow lives, decided once for training, inference and monitoring, from `Settings` (never the environment).

`settings.mlflow_tracking_uri` (MLFLOW_TRACKING_URI) wins when set (a server or a database URL); otherwise a SQLite
file `<data_dir>/mlflow.db` (registry included) with artifacts under the ABSOLUTE folder `<data_dir>/mlartifacts`,
so a process started from any working directory finds the same files. mlflow is imported lazily: it takes seconds,
and importing this module must stay cheap.
"""
from __future__ import annotations

import logging
import os
import pathlib

from services.common.db import private_file, private_folder
from services.common.settings import Settings


def quiet() -> None:
    """Silence MLflow's chatter (alembic migrations, git probing, registry INFO lines) for CLI and services.
    The two setdefaults configure libraries that read only the environment; they are not our settings."""
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


def tracking_uri(settings: Settings) -> str:
    """`settings.mlflow_tracking_uri` if set, else `sqlite:///<data_dir>/mlflow.db` (the folder is created)."""
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    private_folder(settings.data_dir)
    return f"sqlite:///{private_file(settings.data_dir / 'mlflow.db')}"


def artifact_root(settings: Settings) -> pathlib.Path:
    """Absolute artifact folder for experiments created against a database URI (created if missing)."""
    folder = settings.data_dir / "mlartifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def configure(settings: Settings) -> str:
    """Point the mlflow module (tracking and registry) at our location; returns the tracking URI."""
    import mlflow

    quiet()
    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def client(settings: Settings):
    """An MlflowClient for our location (tracking and registry on the same URI)."""
    from mlflow import MlflowClient

    uri = configure(settings)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(settings: Settings, name: str | None = None) -> str:
    """The experiment's id (`name`, default `settings.mlflow_experiment_name`), creating it with an absolute
    artifact location unless a tracking server decides."""
    import mlflow

    uri = configure(settings)
    name = name or settings.mlflow_experiment_name
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None if uri.startswith(("http://", "https://", "databricks")) else artifact_root(settings).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)
