"""The model this instance serves: loaded by alias through `services.common.model_registry`, swapped atomically
on reload.

The registry's native model is called on the calling thread, on the float32 matrix `services.common.features`
produces — no pyfunc or pandas in the request path — and answers P(churn), the margin and TreeSHAP.

`ModelHolder.current` is one reference: a request reads it once and uses that model to the end, while a reload
builds the next model off to the side and replaces the reference in a single assignment — in-flight requests
finish on the old model, new ones get the new one, none fails.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import pathlib
import threading
from typing import Callable, Protocol

import numpy as np

from services.common import compiled_trees
from services.common.errors import FailedPrecondition, NotReady
from services.common.logs import fields
from services.common.model_registry import LoadedVersion, NativeModel, SklearnModel
from services.inference import explain, metrics

log = logging.getLogger("churn.inference.model")


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
    native: NativeModel
    loaded_at: datetime.datetime

    def contributions(self, X: np.ndarray) -> explain.Contributions:
        """TreeSHAP summed back to the customer's fields (margin space)."""
        return explain.fold(*self.native.contributions(X))


class Registry(Protocol):
    def version_for(self, alias: str) -> str:
        """The version number the alias points at now (NotFound if none)."""

    def load(self, version: str) -> LoadedVersion: ...


def loaded_model(version: LoadedVersion, alias: str, compiled_dir: pathlib.Path | None = None) -> LoadedModel:
    """A served model from a registry version: compiled trees when `compiled_dir` is given (the native model when
    compiling fails: logged and counted), and shap's explainer built now, not on the first Explain call."""
    native: NativeModel = version.model
    if isinstance(native, SklearnModel):
        native.explainer()
    info = version.info
    if compiled_dir is not None:
        try:
            native = compiled_trees.compile_model(native, compiled_dir,
                                                  compiled_trees.cache_key(info.name, info.version, version.digest))
        except Exception as exc:  # noqa: BLE001 - no gcc, a Treelite gap, a parity miss: serve the native model
            metrics.COMPILE_FAILURES.labels(native.flavor).inc()
            log.warning("compiling the model failed; serving the native model",
                        extra=fields(model=info.name, version=info.version, error=str(exc)[:500]))
    return LoadedModel(name=info.name, version=info.version, alias=alias, flavor=version.model.flavor,
                       run_id=info.run_id, metrics={**version.model_info.get("metrics", {}), **info.training_metrics},
                       threshold=float(version.model_info.get("threshold", 0.5)), features=version.features,
                       native=native, loaded_at=datetime.datetime.now(datetime.timezone.utc))


@dataclasses.dataclass(frozen=True)
class ReloadResult:
    previous: LoadedModel | None
    current: LoadedModel
    changed: bool


class ModelHolder:
    """The served model for one alias; `ready` once the first load succeeded."""

    def __init__(self, registry: Registry, alias: str, compiled_dir: pathlib.Path | None = None,
                 on_loaded: Callable[[str], None] | None = None):
        self._registry = registry
        self.alias = alias
        self._compiled_dir = compiled_dir
        self._on_loaded = on_loaded  # told the version served after every successful (re)load
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
                loaded = loaded_model(self._registry.load(version), self.alias, self._compiled_dir)
            except Exception:
                metrics.MODEL_RELOADS.labels("failed").inc()
                raise
            self._current = loaded  # the atomic swap
            if self._on_loaded is not None:
                self._on_loaded(loaded.version)
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
