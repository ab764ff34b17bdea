"""The model registry as monitoring sees it: versions with aliases and training metrics, and each version's
training reference (the drift baseline), read from MLflow through the layout `training.registry` documents.

MLflow is imported when this is built (at start), never per request; references are downloaded once per version
and kept in memory (a few hundred KB each).
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import pathlib
import tempfile
import threading

import pandas as pd

from services.common import mlflow_config
from services.common.errors import FailedPrecondition, NotFound, NotReady
from services.common.telco_csv import parse_telco_csv
from training import registry as R

log = logging.getLogger("churn.monitoring.versions")


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created_at: dt.datetime
    training_metrics: dict[str, float]
    flavor: str


class ModelRegistry:
    def __init__(self, data_dir: pathlib.Path, model_name: str, default_alias: str = R.ALIAS_PRODUCTION):
        from mlflow.exceptions import MlflowException

        self._errors = MlflowException
        self._client = mlflow_config.client(data_dir)
        self.name = model_name
        self.default_alias = default_alias
        self._references: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()

    def _call(self, what: str, fn, *args):
        """Run an MLflow call; 'does not exist' is NotFound, anything else means the registry is unreachable."""
        try:
            return fn(*args)
        except self._errors as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(f"{what} not found in the registry") from None
            raise NotReady(f"model registry unavailable ({what}): {exc.message}") from None

    def versions(self) -> list[VersionInfo]:
        found = self._call(f"model {self.name!r}", self._client.search_model_versions, f"name = '{self.name}'")
        # search results leave `aliases` empty; the registered model holds the alias → version map
        model = self._call(f"model {self.name!r}", self._client.get_registered_model, self.name) if found else None
        aliases: dict[str, list[str]] = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        return sorted((self._info(v, aliases.get(str(v.version))) for v in found), key=lambda v: int(v.version))

    def get(self, version: str) -> VersionInfo:
        if not version.isdigit():
            raise NotFound(f"model version {version!r} of {self.name!r} not found (versions are numbers)")
        return self._info(self._call(f"model {self.name!r} version {version}", self._client.get_model_version,
                                     self.name, version))

    def alias_version(self, alias: str | None = None) -> str:
        """The version an alias points at (default: production); FailedPrecondition when none is registered."""
        alias = alias or self.default_alias
        try:
            found = self._call(f"alias {alias!r}", self._client.get_model_version_by_alias, self.name, alias)
            return str(found.version)  # the registry may hand back an int; versions are strings everywhere else
        except NotFound:
            raise FailedPrecondition(f"no version of model {self.name!r} has the alias {alias!r}: train and "
                                     f"register a model first, or pass a reference_id") from None

    def _info(self, mv, aliases: list[str] | None = None) -> VersionInfo:
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(self._client.get_run(mv.run_id).data.metrics)
            except self._errors:
                log.warning("run %s of version %s is gone; no training metrics", mv.run_id, mv.version)
        return VersionInfo(
            name=mv.name, version=str(mv.version),
            aliases=tuple(sorted(aliases if aliases is not None else getattr(mv, "aliases", None) or [])),
            run_id=mv.run_id or "",
            created_at=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.timezone.utc),
            training_metrics={k: float(v) for k, v in metrics.items()}, flavor=(mv.tags or {}).get(R.TAG_FLAVOR, ""))

    def training_reference(self, version: str) -> pd.DataFrame:
        """The version's raw training split (no customer id) as the cleaned Telco frame; cached per version."""
        with self._lock:
            if version in self._references:
                return self._references[version]
        self.get(version)  # NotFound for an unknown version before any download
        from mlflow.artifacts import download_artifacts

        source = self._call(f"artifacts of version {version}", self._client.get_model_version_download_uri,
                            self.name, version)
        with tempfile.TemporaryDirectory(prefix="reference-") as tmp:
            try:
                path = download_artifacts(artifact_uri=f"{source.rstrip('/')}/{R.REFERENCE_TRAIN}", dst_path=tmp,
                                          tracking_uri=self._client.tracking_uri)
            except (self._errors, OSError) as exc:
                raise FailedPrecondition(f"model version {version} has no training reference "
                                         f"({R.REFERENCE_TRAIN}): {exc}") from None
            data = pathlib.Path(path).read_bytes()
        frame = parse_telco_csv(data, max_bytes=len(data) + 1, max_rows=10_000_000).frame
        with self._lock:
            self._references[version] = frame
        return frame
