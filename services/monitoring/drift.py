"""Data drift with Evidently's DataDriftPreset: a reference set against the last `window` logged inputs.

The reference is a model version's training split (from the registry) or an uploaded set (`reference_id`). The
current window is the newest logged inputs of that version (or of all versions). Evidently decides per column
(its own stat test and threshold, chosen by column type and size) and the dataset verdict (share of drifted
columns ≥ 0.5); we only read its result: the HTML is Evidently's own page, the JSON our summary plus Evidently's
raw metric/test dump. Evidently is imported once, when the analyzer is built (~2 s, ~290 MB).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from typing import Protocol

import pandas as pd

from services.common import features as F
from services.common.errors import FailedPrecondition, InvalidInput, NotFound, shown
from services.monitoring.store import MonitoringStore

DEFAULT_WINDOW, MAX_WINDOW, MIN_ROWS = 500, 100_000, 50
FORMATS = {"html": "text/html; charset=utf-8", "json": "application/json"}
NUMERICAL = tuple(f.column for f in F.FEATURES if f.kind == F.NUMERIC)
CATEGORICAL = tuple(f.column for f in F.FEATURES if f.kind != F.NUMERIC)  # SeniorCitizen 0/1 is a category


class ReferenceSource(Protocol):
    """What the analyzer reads of the registry (versions.TrainingReferences): versions, the default alias, and each
    version's training split."""

    def get(self, version: str): ...
    def alias_version(self, alias: str | None = None) -> str: ...
    def training_reference(self, version: str) -> pd.DataFrame: ...


@dataclasses.dataclass(frozen=True)
class ColumnResult:
    column: str
    drifted: bool
    stat_test: str
    score: float
    threshold: float


@dataclasses.dataclass(frozen=True)
class DriftResult:
    dataset_drift: bool
    drift_share: float
    drifted_columns: int
    columns: int
    by_column: tuple[ColumnResult, ...]
    reference_rows: int
    current_rows: int
    model_version: str  # the version filter of the window ("" = all versions)
    reference: str  # "model version N training data" or "dataset <id>"
    content_type: str = ""
    body: bytes = b""


def check_request(window: int | None, fmt: str) -> tuple[int, str]:
    """Validate before any work. `window` is None when the caller did not send one (the field tracks presence):
    that means the default; zero, negative or oversized is the caller's mistake. An empty format means html."""
    if window is None:
        window = DEFAULT_WINDOW
    if window < 1 or window > MAX_WINDOW:
        raise InvalidInput("window", f"must be between 1 and {MAX_WINDOW} (omit it for {DEFAULT_WINDOW}), "
                                     f"got {window}")
    fmt = (fmt or "html").strip().lower()
    if fmt not in FORMATS:
        raise InvalidInput("format", f"must be one of {sorted(FORMATS)}, got {shown(fmt)}")
    return window, fmt


class DriftAnalyzer:
    def __init__(self, store: MonitoringStore, references: ReferenceSource, max_concurrent: int = 2):
        from evidently import DataDefinition, Dataset, Report  # the one import of evidently, at start
        from evidently.presets import DataDriftPreset

        self._Report, self._Dataset, self._Preset = Report, Dataset, DataDriftPreset
        self._definition = DataDefinition(numerical_columns=list(NUMERICAL), categorical_columns=list(CATEGORICAL))
        self._store = store
        self._references = references
        self._slots = threading.BoundedSemaphore(max_concurrent)  # each run holds ~1 s of CPU and some memory

    def _reference(self, model_version: str, reference_id: str) -> tuple[pd.DataFrame, str]:
        if reference_id:
            found = self._store.references.load(reference_id)
            if found is None:
                raise NotFound(f"reference set {shown(reference_id)} not found (see UploadTrainingData)")
            return found[1].frame, f"dataset {reference_id}"
        version = model_version or self._references.alias_version()
        return self._references.training_reference(version), f"model version {version} training data"

    def run(self, window: int | None, fmt: str, model_version: str = "", reference_id: str = "",
            render: bool = True) -> DriftResult:
        window, fmt = check_request(window, fmt)
        model_version = model_version.strip()
        if model_version:
            self._references.get(model_version)  # NotFound for a version the registry does not know
        reference, reference_name = self._reference(model_version, reference_id)
        current = self._store.recent_inputs(window, model_version)
        if len(current) < MIN_ROWS:
            scope = f"model version {model_version}" if model_version else "all model versions"
            raise FailedPrecondition(f"the window holds {len(current)} logged inputs for {scope}; drift needs at "
                                     f"least {MIN_ROWS}")
        with self._slots:
            snapshot = self._Report([self._Preset()], include_tests=True).run(
                self._Dataset.from_pandas(current.iloc[::-1].reset_index(drop=True), data_definition=self._definition),
                self._Dataset.from_pandas(reference, data_definition=self._definition))
            raw = json.loads(snapshot.json())
            html = snapshot.get_html_str(as_iframe=False) if render and fmt == "html" else ""
        result = summarize(raw, len(reference), len(current), model_version, reference_name)
        if not render:
            return result
        if fmt == "html":
            body = html.encode()
        else:
            body = json.dumps({**to_json(result), "evidently": raw}, default=str).encode()
        return dataclasses.replace(result, content_type=FORMATS[fmt], body=body)


def summarize(raw: dict, reference_rows: int, current_rows: int, model_version: str, reference: str) -> DriftResult:
    """Read Evidently's verdicts from its snapshot: per column the ValueDrift metric (score, method, threshold)
    and its test (FAIL = drifted); the dataset from DriftedColumnsCount (count, share) and its share test."""
    metrics = {m["id"]: m for m in raw.get("metrics", [])}
    failed = {t["metric_config"]["metric_id"]: t["status"] == "FAIL" for t in raw.get("tests", [])}
    columns, count_metric = [], None
    for metric_id, metric in metrics.items():
        config = metric.get("config", {})
        kind = config.get("type", "")
        if kind.endswith(":ValueDrift"):
            columns.append(ColumnResult(config["column"], failed.get(metric_id, False), config.get("method", ""),
                                        float(metric["value"]), float(config.get("threshold") or 0.0)))
        elif kind.endswith(":DriftedColumnsCount"):
            count_metric = metric
    if count_metric is None:
        raise RuntimeError("Evidently's DataDriftPreset returned no DriftedColumnsCount metric")
    drifted = sum(c.drifted for c in columns)
    share = float(count_metric["value"]["share"])
    threshold = float(count_metric["config"].get("drift_share", 0.5))
    dataset_drift = failed.get(count_metric["id"], share >= threshold)
    order = {c: i for i, c in enumerate(F.FEATURE_COLUMNS)}
    columns.sort(key=lambda c: order.get(c.column, len(order)))
    return DriftResult(dataset_drift=bool(dataset_drift), drift_share=share, drifted_columns=drifted,
                       columns=len(columns), by_column=tuple(columns), reference_rows=reference_rows,
                       current_rows=current_rows, model_version=model_version, reference=reference)


def to_json(result: DriftResult) -> dict:
    return {
        "model_version": result.model_version, "reference": result.reference,
        "reference_rows": result.reference_rows, "current_rows": result.current_rows,
        "dataset_drift": result.dataset_drift, "drift_share": result.drift_share,
        "drifted_columns": result.drifted_columns, "columns": result.columns,
        "by_column": {c.column: {"drifted": c.drifted, "stat_test": c.stat_test, "score": c.score,
                                 "threshold": c.threshold} for c in result.by_column},
    }
