"""The model this instance serves: loaded by alias from the MLflow registry through a small per-flavour adapter,
swapped atomically on reload.

Adapters call the NATIVE model logged with each version (training/registry.py documents the layout) on the
calling thread, on the float32 matrix `services.common.features` produces — no pyfunc or pandas in the request
path. Both adapters answer in the same terms: P(churn), the margin (log-odds) and TreeSHAP contributions in margin
space (xgboost's own `pred_contribs`; shap's TreeExplainer for the scikit-learn ensemble).

`ModelHolder.current` is one reference: a request reads it once and uses that model to the end, while a reload
builds the next model off to the side and replaces the reference in a single assignment — in-flight requests
finish on the old model, new ones get the new one, none fails.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import pathlib
import tempfile
import threading
from typing import Callable, Protocol

import numpy as np

from services.common import features as F
from services.common import mlflow_config
from services.common.errors import FailedPrecondition, NotFound, NotReady
from services.common.logs import fields
from services.inference import explain, metrics

log = logging.getLogger("churn.inference.model")


class Adapter(Protocol):
    flavor: str

    def probability(self, X: np.ndarray) -> np.ndarray: ...

    def margin(self, X: np.ndarray) -> np.ndarray: ...

    def contributions(self, X: np.ndarray) -> explain.Contributions: ...


class XgboostAdapter:
    """Two copies of the booster: OpenMP start-up dominates a small batch (measured here: one row took 0.5 ms
    with nthread=1 and 1.8-3.5 ms with 2 threads), while 1,000 rows run 2.6x faster on both cores."""

    flavor = "xgboost"
    SMALL_BATCH = 64

    def __init__(self, booster, threads: int | None = None):
        import os

        import xgboost

        self._xgb = xgboost
        self._single = booster.copy()
        self._single.set_param({"nthread": 1})
        self._booster = booster
        self._booster.set_param({"nthread": threads or os.cpu_count() or 1})

    def _for(self, X: np.ndarray):
        return self._single if len(X) <= self.SMALL_BATCH else self._booster

    def probability(self, X: np.ndarray) -> np.ndarray:
        return self._for(X).inplace_predict(X)

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self._for(X).inplace_predict(X, predict_type="margin")

    def contributions(self, X: np.ndarray) -> explain.Contributions:
        values = self._for(X).predict(self._xgb.DMatrix(X), pred_contribs=True)
        return explain.fold(values[:, :-1], values[:, -1])  # the last column is the bias (base value)


class SklearnAdapter:
    """A scikit-learn tree ensemble (training fits GradientBoostingClassifier: margin = decision_function)."""

    flavor = "sklearn"

    def __init__(self, model):
        import shap

        self._model = model
        self._explainer = shap.TreeExplainer(model)

    def probability(self, X: np.ndarray) -> np.ndarray:
        return self._model.predict_proba(X)[:, 1]

    def margin(self, X: np.ndarray) -> np.ndarray:
        if hasattr(self._model, "decision_function"):
            return np.asarray(self._model.decision_function(X), dtype=np.float64).reshape(-1)
        return self.probability(X)  # forests: TreeExplainer explains the probability itself

    def contributions(self, X: np.ndarray) -> explain.Contributions:
        values = self._explainer.shap_values(X, check_additivity=False)
        base = np.asarray(self._explainer.expected_value, dtype=np.float64).reshape(-1)
        if isinstance(values, list):  # older shap: one array per class
            values = values[-1]
        values = np.asarray(values)
        if values.ndim == 3:  # (n, features, classes)
            values = values[:, :, -1]
        return explain.fold(values, base[-1])


ADAPTERS: dict[str, Callable[[object], Adapter]] = {"xgboost": XgboostAdapter, "sklearn": SklearnAdapter}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    flavor: str
    run_id: str
    metrics: dict[str, float]
    threshold: float
    features: list[dict]  # the version's feature_spec.json "features" (name, kind, categories)
    adapter: Adapter
    loaded_at: datetime.datetime


class Registry(Protocol):
    def version_for(self, alias: str) -> str:
        """The version number the alias points at now (NotFound if none)."""

    def load(self, version: str, alias: str) -> LoadedModel: ...


class MlflowRegistry:
    """Reads one registered model from the MLflow registry at `tracking_uri` (no global mlflow state, so two
    registries can be used in one process)."""

    def __init__(self, tracking_uri: str, name: str):
        from mlflow import MlflowClient

        mlflow_config.quiet()
        self.name = name
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def version_for(self, alias: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return str(self._client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            raise NotFound(f"model {self.name!r} has no version with alias {alias!r}: {exc.message}") from None

    def load(self, version: str, alias: str) -> LoadedModel:
        from training import registry as R

        model_version = self._client.get_model_version(self.name, version)
        with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
            root = R.download_version_artifacts(self._client, self.name, version, tmp)
            info = R.read_model_info(root)
            spec = _read_json(root / R.FEATURE_SPEC)
            if spec.get("encoded_columns") != list(F.ENCODED_COLUMNS):
                raise FailedPrecondition(f"model {self.name} version {version} was trained on other encoded columns "
                                         "than this service's feature module produces; retrain it")
            flavor, native = R.load_native_model(root)
        run_metrics = dict(info.get("metrics", {}))
        if model_version.run_id:
            run_metrics.update(self._client.get_run(model_version.run_id).data.metrics)
        return LoadedModel(name=self.name, version=str(version), alias=alias, flavor=flavor,
                           run_id=model_version.run_id or "", metrics=run_metrics,
                           threshold=float(info.get("threshold", 0.5)), features=spec["features"],
                           adapter=ADAPTERS[flavor](native),
                           loaded_at=datetime.datetime.now(datetime.timezone.utc))


def _read_json(path: pathlib.Path) -> dict:
    import json

    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    previous: LoadedModel | None
    current: LoadedModel
    changed: bool


class ModelHolder:
    """The served model for one alias; `ready` once the first load succeeded."""

    def __init__(self, registry: Registry, alias: str):
        self._registry = registry
        self.alias = alias
        self._current: LoadedModel | None = None
        self._reload_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NotReady(f"no model loaded yet for alias {self.alias!r}")
        return model

    def check_alias(self, alias: str) -> None:
        """An alias-bound RPC naming another alias reached the wrong instance: refuse, never answer for it."""
        if alias and alias != self.alias:
            raise FailedPrecondition(f"alias: this instance serves {self.alias!r}, not {alias!r}")

    def reload(self) -> ReloadResult:
        """Load the alias's current version (unless already served) and swap it in."""
        with self._reload_lock:
            previous = self._current
            try:
                version = self._registry.version_for(self.alias)
                if previous is not None and previous.version == version:
                    metrics.MODEL_RELOADS.labels("unchanged").inc()
                    return ReloadResult(previous, previous, False)
                loaded = self._registry.load(version, self.alias)
            except Exception:
                metrics.MODEL_RELOADS.labels("failed").inc()
                raise
            self._current = loaded  # the atomic swap
            if previous is not None:
                metrics.MODEL_INFO.labels(previous.name, previous.version, previous.alias, previous.flavor).set(0)
            metrics.MODEL_INFO.labels(loaded.name, loaded.version, loaded.alias, loaded.flavor).set(1)
            metrics.MODEL_RELOADS.labels("changed").inc()
            log.info("model loaded", extra=fields(model=loaded.name, version=loaded.version, alias=loaded.alias,
                                                  flavor=loaded.flavor,
                                                  previous=previous.version if previous else None))
            return ReloadResult(previous, loaded, True)

    def load_until_ready(self, stop: threading.Event, on_ready: Callable[[], None],
                         initial_wait: float = 0.5, max_wait: float = 15.0) -> None:
        """First load at start: retry (the registry may not have the alias yet) until it works or `stop`."""
        wait = initial_wait
        while not stop.is_set():
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - keep NOT_SERVING and retry; the log says why
                log.warning("model not loaded yet; retrying", extra=fields(alias=self.alias, error=str(exc),
                                                                           retry_seconds=wait))
                stop.wait(wait)
                wait = min(wait * 2, max_wait)
                continue
            on_ready()
            return
