"""The registered churn model, in one place: the artifact layout, aliases, MLflow access, native load, P(churn),
margin and TreeSHAP per flavour. Training writes versions in this layout; inference and monitoring read them.

One registered model (setting MODEL_NAME) holds every version; aliases `production` and `staging` pick what the two
inference instances serve. Each version is a custom `mlflow.pyfunc` model (training/pyfunc_model.py) whose
directory, as `ModelRegistry.download` returns it, is:

    MLmodel, python_model.py, requirements.txt, …   the pyfunc (raw Telco columns in, P(churn) out)
    code/services/common/…, code/churn/v1/*_pb2.py    its code_paths (feature module, this module, errors, stubs)
    artifacts/model_info.json        {"flavor", "native_model", "training_fingerprint", "metrics", "threshold", …}
    artifacts/model.json             xgboost: Booster.save_model JSON
    artifacts/model.joblib           sklearn: the fitted tree ensemble (shap's TreeExplainer supports it)
    artifacts/feature_spec.json      services.common.features.feature_spec(): columns, vocabularies, encoded order
    artifacts/reference/train.csv    the raw training split: Telco columns + Churn, NO customerID (drift reference)
    artifacts/reference/holdout.csv  the held-out split: customerID + Telco columns + Churn

Native models take `services.common.features` encodings (float32, `ENCODED_COLUMNS` order). Version tags: `flavor`
and `training_fingerprint`. MLflow, xgboost, joblib and shap are imported where used, never at import time.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import pathlib
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from services.common import features as F
from services.common.errors import FailedPrecondition, NotFound, NotReady, shown

ALIAS_PRODUCTION, ALIAS_STAGING = "production", "staging"
ALIAS_PREVIOUS = "previous"  # production before the last promotion: what Rollback restores
FLAVORS = ("xgboost", "sklearn")
# A version as MLflow numbers them; ASCII only (str.isdigit accepts "²") and short enough for the registry's
# 64-bit integer column (20 digits overflow SQLite, which MLflow reports as a server error).
MAX_VERSION_DIGITS = 18
VERSION_PATTERN = re.compile(rf"[0-9]{{1,{MAX_VERSION_DIGITS}}}")
TAG_FLAVOR, TAG_FINGERPRINT = "flavor", "training_fingerprint"

ARTIFACTS_DIR = "artifacts"
MODEL_INFO = f"{ARTIFACTS_DIR}/model_info.json"
FEATURE_SPEC = f"{ARTIFACTS_DIR}/feature_spec.json"
REFERENCE_TRAIN = f"{ARTIFACTS_DIR}/reference/train.csv"
REFERENCE_HOLDOUT = f"{ARTIFACTS_DIR}/reference/holdout.csv"
NATIVE_MODEL = {"xgboost": f"{ARTIFACTS_DIR}/model.json", "sklearn": f"{ARTIFACTS_DIR}/model.joblib"}


# ---- native models ------------------------------------------------------------------------------------------------
class NativeModel(Protocol):
    """A version's model in the terms every caller shares: P(churn), the margin (log-odds) and TreeSHAP in margin
    space per encoded column, with its base value."""

    flavor: str

    def probability(self, X: np.ndarray) -> np.ndarray: ...

    def margin(self, X: np.ndarray) -> np.ndarray: ...

    def margin_and_probability(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class XgboostModel:
    """Two copies of the booster: OpenMP start-up dominates a small batch (measured here: one row took 0.5 ms
    with nthread=1 and 1.8-3.5 ms with 2 threads), while 1,000 rows run 2.6x faster on every core.

    TreeSHAP is the exception: ~130 µs a row on one core, ~60x a prediction, so every explanation may use every
    core, whatever `threads` says. Not through OpenMP, which splits the rows statically, so the whole call waits
    for the thread whose core something else holds: a large explanation is cut into chunks that one-thread calls,
    one per core, take in turn. Measured here (1,000 rows, load average ~1.4 from other work): alone 132 ms on one
    thread, 99 ms on 2 OpenMP threads, 71 ms in chunks; beside a process predicting in a loop 229 / 224 / 171 ms,
    that process slowed alike by either way of using both cores. Each row is explained on its own, so the values
    are the same bits (tested); xgboost's predictions are thread-safe since 1.4, so the chunks share one booster."""

    flavor = "xgboost"
    SMALL_BATCH = 64
    EXPLAIN_CHUNK = 64

    def __init__(self, booster, threads: int | None = None):
        self.booster = booster
        self._single = booster.copy()
        self._single.set_param({"nthread": 1})
        self._booster = booster
        self._booster.set_param({"nthread": threads or os.cpu_count() or 1})
        self._logistic = json.loads(booster.save_config())["learner"]["objective"]["name"] == "binary:logistic"
        self._explainers: ThreadPoolExecutor | None = None
        self._explainers_lock = threading.Lock()

    def _for(self, X: np.ndarray):
        return self._single if len(X) <= self.SMALL_BATCH else self._booster

    def probability(self, X: np.ndarray) -> np.ndarray:
        return self._for(X).inplace_predict(X)

    def margin(self, X: np.ndarray) -> np.ndarray:
        return self._for(X).inplace_predict(X, predict_type="margin")

    def margin_and_probability(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One prediction for both: binary:logistic's probability is the float32 sigmoid of the float32 margin,
        the same bits `probability` answers (tested on every Telco row)."""
        margin = self.margin(X)
        if not self._logistic:
            return margin, self.probability(X)
        from scipy.special import expit

        return margin, expit(margin)

    def _contribs(self, X: np.ndarray) -> np.ndarray:
        import xgboost

        return self._single.predict(xgboost.DMatrix(X, nthread=1), pred_contribs=True)

    def _pool(self) -> ThreadPoolExecutor:
        with self._explainers_lock:
            if self._explainers is None:
                self._explainers = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="treeshap")
            return self._explainers

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(X) <= self.EXPLAIN_CHUNK:
            values = self._contribs(X)
        else:  # up to 4 chunks a core (balance) of at least EXPLAIN_CHUNK rows (each call costs ~0.4 ms)
            cores = os.cpu_count() or 1
            chunks = np.array_split(X, min(-(-len(X) // self.EXPLAIN_CHUNK), 4 * cores))
            values = np.concatenate(list(self._pool().map(self._contribs, chunks)))
        return values[:, :-1], values[:, -1]  # the last column is the bias (base value)


class SklearnModel:
    """A scikit-learn tree ensemble (training fits GradientBoostingClassifier: margin = decision_function).
    shap is imported and its TreeExplainer built on the first explanation (the pyfunc and training never need it)."""

    flavor = "sklearn"

    def __init__(self, model):
        self.estimator = model
        self._explainer = None

    def probability(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)[:, 1]

    def margin(self, X: np.ndarray) -> np.ndarray:
        if hasattr(self.estimator, "decision_function"):
            return np.asarray(self.estimator.decision_function(X), dtype=np.float64).reshape(-1)
        return self.probability(X)  # forests: TreeExplainer explains the probability itself

    def margin_and_probability(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One prediction for both where scikit-learn's own `predict_proba` is the sigmoid of `decision_function`
        (binary GradientBoosting with log loss): the same bits, tested on every Telco row."""
        margin = self.margin(X)
        if not (getattr(self.estimator, "loss", None) == "log_loss" and hasattr(self.estimator, "decision_function")
                and len(getattr(self.estimator, "classes_", ())) == 2):
            return margin, self.probability(X)
        from scipy.special import expit

        return margin, expit(margin)

    def explainer(self):
        if self._explainer is None:
            import shap

            self._explainer = shap.TreeExplainer(self.estimator)
        return self._explainer

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        explainer = self.explainer()
        values = explainer.shap_values(X, check_additivity=False)
        base = np.asarray(explainer.expected_value, dtype=np.float64).reshape(-1)
        if isinstance(values, list):  # older shap: one array per class
            values = values[-1]
        values = np.asarray(values)
        if values.ndim == 3:  # (n, features, classes)
            values = values[:, :, -1]
        return values, np.full(len(values), base[-1])


def native_model(flavor: str, model, threads: int | None = None) -> NativeModel:
    """Wrap a fitted estimator (xgboost Booster or XGBClassifier; a scikit-learn tree ensemble). `threads` caps
    xgboost's threads for large batches (default: every core)."""
    if flavor == "xgboost":
        return XgboostModel(model.get_booster() if hasattr(model, "get_booster") else model, threads)
    if flavor == "sklearn":
        return SklearnModel(model)
    raise FailedPrecondition(f"unknown model flavour {flavor!r} (known: {', '.join(FLAVORS)})")


def read_model_info(root: str | pathlib.Path) -> dict[str, Any]:
    return json.loads((pathlib.Path(root) / MODEL_INFO).read_text())


def load_native(root: str | pathlib.Path, threads: int | None = None) -> NativeModel:
    """The native model of a downloaded version directory."""
    root = pathlib.Path(root)
    flavor = read_model_info(root)["flavor"]
    path = root / NATIVE_MODEL[flavor]
    if flavor == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(path))
        return native_model(flavor, booster, threads)
    import joblib

    return native_model(flavor, joblib.load(path))


# ---- the registry ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created_at: dt.datetime
    training_metrics: dict[str, float]
    flavor: str
    tags: dict[str, str]


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    """What a server needs of one version, read once: its info, model_info.json, feature spec and native model."""

    info: VersionInfo
    model_info: dict[str, Any]
    features: list[dict]
    model: NativeModel
    digest: str  # sha256 of the native model file: names what was really loaded (compiled-model cache key)


class ModelRegistry:
    """One registered model in the MLflow registry at `tracking_uri` (a client of its own, no global mlflow state,
    so two registries can live in one process). MLflow's "does not exist" is NotFound; any other MLflow failure
    means the registry is unreachable (NotReady)."""

    def __init__(self, tracking_uri: str, name: str, threads: int | None = None):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        self._errors = MlflowException
        self.name = name
        self._threads = threads  # xgboost threads per loaded model (serving: cores / worker processes)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except self._errors as exc:
            code = getattr(exc, "error_code", "")
            # a missing alias of an existing model is INVALID_PARAMETER_VALUE "… alias X not found" in MLflow 3
            if code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message):
                raise NotFound(f"{what} not found in the registry") from None
            raise NotReady(f"model registry unavailable ({what}): {exc.message}") from None

    def version_for(self, alias: str) -> str:
        """The version number an alias points at (NotFound when none)."""
        found = self._call(f"alias {alias!r} of model {self.name!r}", self.client.get_model_version_by_alias,
                           self.name, alias)
        return str(found.version)  # MLflow may hand back an int; versions are strings everywhere else

    def alias_or_none(self, alias: str) -> str | None:
        try:
            return self.version_for(alias)
        except NotFound:
            return None

    def set_alias(self, alias: str, version: str) -> None:
        self._call(f"version {version} of model {self.name!r}", self.client.set_registered_model_alias, self.name,
                   alias, str(version))

    def get(self, version: str) -> VersionInfo:
        if not VERSION_PATTERN.fullmatch(str(version)):
            raise NotFound(f"model version {shown(str(version))} of {self.name!r} not found (versions are numbers "
                           f"of at most {MAX_VERSION_DIGITS} ASCII digits)")
        return self._info(self._call(f"model {self.name!r} version {version}", self.client.get_model_version,
                                     self.name, str(version)))

    def versions(self) -> list[VersionInfo]:
        found = self._call(f"model {self.name!r}", self.client.search_model_versions, f"name = '{self.name}'")
        # search results leave `aliases` empty; the registered model holds the alias → version map
        model = self._call(f"model {self.name!r}", self.client.get_registered_model, self.name) if found else None
        aliases: dict[str, list[str]] = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        return sorted((self._info(v, aliases.get(str(v.version))) for v in found), key=lambda v: int(v.version))

    def _info(self, mv, aliases: list[str] | None = None) -> VersionInfo:
        metrics: dict[str, float] = {}
        if mv.run_id:
            try:
                metrics = dict(self.client.get_run(mv.run_id).data.metrics)
            except self._errors:  # the run was deleted: the version still serves, without training metrics
                pass
        tags = dict(mv.tags or {})
        return VersionInfo(
            name=mv.name, version=str(mv.version),
            aliases=tuple(sorted(aliases if aliases is not None else getattr(mv, "aliases", None) or [])),
            run_id=mv.run_id or "", created_at=dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=dt.timezone.utc),
            training_metrics={k: float(v) for k, v in metrics.items()}, flavor=tags.get(TAG_FLAVOR, ""), tags=tags)

    def download(self, version: str, dst: str | pathlib.Path, path: str = "") -> pathlib.Path:
        """A version's model directory (layout above), or one `path` inside it, downloaded into `dst`."""
        from mlflow.artifacts import download_artifacts

        source = self._call(f"artifacts of version {version}", self.client.get_model_version_download_uri,
                            self.name, str(version))
        if path:
            source = f"{source.rstrip('/')}/{path}"
        dst = pathlib.Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        try:
            found = download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.client.tracking_uri)
        except (self._errors, OSError) as exc:
            raise FailedPrecondition(f"model version {version} has no {path or 'artifacts'}: {exc}") from None
        return pathlib.Path(found)

    def load(self, version: str) -> LoadedVersion:
        """Download a version, check it was trained on this feature module's encoding, load its native model."""
        info = self.get(version)
        with tempfile.TemporaryDirectory(prefix="churn-model-") as tmp:
            root = self.download(version, tmp)
            model_info = read_model_info(root)
            spec = json.loads((root / FEATURE_SPEC).read_text())
            if spec.get("encoded_columns") != list(F.ENCODED_COLUMNS):
                raise FailedPrecondition(f"model {self.name} version {version} was trained on other encoded columns "
                                         "than this service's feature module produces; retrain it")
            model = load_native(root, self._threads)
            digest = hashlib.sha256((root / NATIVE_MODEL[model.flavor]).read_bytes()).hexdigest()
        return LoadedVersion(info, model_info, spec["features"], model, digest)
