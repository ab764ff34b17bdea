"""Telco CSV -> cleaned frame -> stratified 80/20 split -> encoded numpy -> xgboost + sklearn -> MLflow registry.

Re-runs are idempotent: a version whose `training_fingerprint` (data + params + flavor + feature spec) matches is
reused (aliases re-pointed) unless `force`; nothing is fitted when every flavour already has its version.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import pathlib
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from services.common import features as F
from services.common import mlflow_config
from services.common import model_registry as R
from services.common.errors import NotFound
from services.common.settings import Settings
from services.common.telco_csv import TelcoCsv, parse_telco_csv

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "telco_churn.csv"
SEED = 42
TEST_SIZE = 0.2
PARAMS = {
    "xgboost": {"n_estimators": 400, "max_depth": 3, "learning_rate": 0.03, "subsample": 0.8,
                "colsample_bytree": 0.8, "min_child_weight": 3, "reg_lambda": 1.0, "tree_method": "hist",
                "objective": "binary:logistic", "eval_metric": "logloss", "random_state": SEED, "n_jobs": 2},
    "sklearn": {"n_estimators": 200, "max_depth": 3, "learning_rate": 0.05, "subsample": 0.8,
                "random_state": SEED},
}
MAX_CSV_BYTES = 64 << 20


def say(message: str) -> None:
    print(f"training: {message}", flush=True)


def progress(percent: int, message: str) -> None:
    """A progress line; monitoring's Retrain reads `[NN%]` from the child's output (GetTrainingRun.progress)."""
    say(f"[{percent:3d}%] {message}")


@dataclass
class Split:
    data: TelcoCsv
    train_idx: np.ndarray
    test_idx: np.ndarray
    X_train: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)


def load_split(path: pathlib.Path) -> Split:
    from sklearn.model_selection import train_test_split

    data = parse_telco_csv(path.read_bytes(), MAX_CSV_BYTES, 1_000_000)
    if data.churn is None or data.churn.isna().any():
        raise SystemExit(f"{path}: every row needs a Churn label (Yes/No) to train")
    blank = int(data.frame["TotalCharges"].isna().sum())
    say(f"loaded {len(data)} rows from {path} ({blank} blank TotalCharges -> "
        f"{float(F.fill_blank_total_charges(np.array([np.nan]))[0])} by the blank rule)")
    y = data.churn.to_numpy(dtype=bool).astype(np.int32)
    train_idx, test_idx = train_test_split(np.arange(len(data)), test_size=TEST_SIZE, random_state=SEED, stratify=y)
    X = data.encoded
    say(f"split: {len(train_idx)} train / {len(test_idx)} held out (stratified, seed {SEED}), "
        f"{X.shape[1]} encoded columns")
    return Split(data, train_idx, test_idx, X[train_idx], X[test_idx], y[train_idx], y[test_idx])


def fit(flavor: str, split: Split):
    if flavor == "xgboost":
        from xgboost import XGBClassifier

        model = XGBClassifier(**PARAMS["xgboost"])
    else:
        from sklearn.ensemble import GradientBoostingClassifier

        model = GradientBoostingClassifier(**PARAMS["sklearn"])
    started = time.perf_counter()
    model.fit(split.X_train, split.y_train)
    say(f"fitted {flavor} ({type(model).__name__}) in {time.perf_counter() - started:.1f}s")
    return model


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    from sklearn import metrics

    labels = (p >= 0.5).astype(int)
    return {
        "roc_auc": metrics.roc_auc_score(y, p), "f1": metrics.f1_score(y, labels),
        "precision": metrics.precision_score(y, labels), "recall": metrics.recall_score(y, labels),
        "accuracy": metrics.accuracy_score(y, labels), "log_loss": metrics.log_loss(y, p),
    }


def fingerprint(data_bytes: bytes, flavor: str) -> str:
    h = hashlib.sha256(data_bytes)
    h.update(json.dumps({"flavor": flavor, "params": PARAMS[flavor], "seed": SEED, "test_size": TEST_SIZE,
                         "spec": F.feature_spec()}, sort_keys=True).encode())
    return h.hexdigest()


def find_version(registry: R.ModelRegistry, flavor: str, fp: str) -> str | None:
    """The newest registered version with this flavour and fingerprint, or None."""
    matches = [v.version for v in registry.versions() if v.flavor == flavor and v.tags.get(R.TAG_FINGERPRINT) == fp]
    return max(matches, key=int, default=None)


def _write_artifacts(folder: pathlib.Path, flavor: str, model, split: Split, fp: str,
                     scores: dict[str, float]) -> dict[str, str]:
    """The files under artifacts/ (layout in services.common.model_registry); returns log_model's `artifacts` mapping."""
    import joblib

    native = folder / pathlib.Path(R.NATIVE_MODEL[flavor]).name
    if flavor == "xgboost":
        model.get_booster().save_model(str(native))
    else:
        joblib.dump(model, native)
    spec = folder / pathlib.Path(R.FEATURE_SPEC).name
    spec.write_text(json.dumps(F.feature_spec(), indent=2))
    info = folder / pathlib.Path(R.MODEL_INFO).name
    info.write_text(json.dumps({"flavor": flavor, "native_model": R.NATIVE_MODEL[flavor], "estimator":
                                type(model).__name__, "training_fingerprint": fp, "metrics": scores,
                                "threshold": 0.5, "encoded_columns": list(F.ENCODED_COLUMNS)}, indent=2))
    reference = folder / "reference"
    reference.mkdir()
    frame, labels = split.data.frame, split.data.churn.map({True: "Yes", False: "No"})
    train = frame.iloc[split.train_idx].assign(Churn=labels.iloc[split.train_idx].to_numpy())
    train.to_csv(reference / "train.csv", index=False)
    ids = pd.Series(split.data.customer_ids)
    holdout = frame.iloc[split.test_idx].assign(Churn=labels.iloc[split.test_idx].to_numpy())
    holdout.insert(0, F.ID_COLUMN, ids.iloc[split.test_idx].to_numpy())
    holdout.to_csv(reference / "holdout.csv", index=False)
    return {"model": str(native), "feature_spec": str(spec), "model_info": str(info), "reference": str(reference)}


PYFUNC_MODULES = ("features.py", "model_registry.py", "errors.py")  # what the pyfunc imports from services.common


def _code_paths(staging: pathlib.Path) -> list[str]:
    """Only what the pyfunc imports: those services.common modules and the churn.v1 message stubs (protobuf
    only: no grpc, no training code)."""
    import shutil

    common = staging / "services" / "common"
    common.mkdir(parents=True)
    (staging / "services" / "__init__.py").touch()
    (common / "__init__.py").touch()
    for module in PYFUNC_MODULES:
        shutil.copy(ROOT / "services" / "common" / module, common / module)
    import churn.v1.common_pb2 as stub

    gen_churn = pathlib.Path(stub.__file__).resolve().parents[1]
    shutil.copytree(gen_churn, staging / "churn", ignore=shutil.ignore_patterns("__pycache__", "*_grpc.py", "*.pyi"))
    return [str(staging / "services"), str(staging / "churn")]


def log_and_register(flavor: str, model, split: Split, fp: str, name: str, experiment_id: str,
                     lineage: dict[str, str] | None = None):
    """`lineage` (candidates from Retrain): tags on the run and the version, and params on the run."""
    import mlflow
    from mlflow.models import infer_signature

    native = R.native_model(flavor, model)
    scores = evaluate(split.y_test, native.probability(split.X_test))
    say(f"{flavor} held-out metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in scores.items()))
    example = split.data.frame.iloc[split.train_idx[:5]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # integer-column hint: SeniorCitizen/tenure are never NaN
        signature = infer_signature(example, native.probability(split.X_train[:5]).astype(np.float64))
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id,
                                                                 run_name=f"{flavor}-{fp[:8]}") as run:
        tmp = pathlib.Path(tmp)
        (tmp / "artifacts").mkdir()
        artifacts = _write_artifacts(tmp / "artifacts", flavor, model, split, fp, scores)
        mlflow.log_params({"flavor": flavor, "seed": SEED, "test_size": TEST_SIZE, **PARAMS[flavor]})
        import xgboost
        import sklearn

        with warnings.catch_warnings():
            # MLflow hints we answer by design: integer columns (SeniorCitizen, tenure are required, never NaN) and
            # predict type hints (the feature module validates inputs).
            warnings.simplefilter("ignore", UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(ROOT / "training" / "pyfunc_model.py"), artifacts=artifacts,
                code_paths=_code_paths(tmp / "code"),
                signature=signature, input_example=example,
                pip_requirements=[f"mlflow=={mlflow.__version__}", f"xgboost=={xgboost.__version__}",
                                  f"scikit-learn=={sklearn.__version__}", f"pandas=={pd.__version__}",
                                  f"numpy=={np.__version__}", "protobuf", "joblib"])
        mlflow.log_metrics(scores, model_id=info.model_id)
        tags = {R.TAG_FLAVOR: flavor, R.TAG_FINGERPRINT: fp, **(lineage or {})}
        mlflow.set_tags(tags)
        if lineage:
            mlflow.log_params({key.replace("lineage.", "lineage_"): value[:500] for key, value in lineage.items()})
    with contextlib.redirect_stderr(io.StringIO()):  # register_model eprints "Successfully registered …"
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    say(f"registered {name} version {version.version} ({flavor}, run {run.info.run_id}, model {info.model_id})")
    return version, scores


def run(data_path: pathlib.Path = DEFAULT_DATA, name: str | None = None, production_flavor: str = "xgboost",
        staging_flavor: str = "sklearn", force: bool = False, if_missing: bool = False) -> dict[str, str]:
    """Train (or reuse) one version per needed flavour and point the aliases; returns {alias: version}."""
    settings = Settings.from_env()
    name = name or settings.model_name
    mlflow_config.quiet()
    registry = R.ModelRegistry(mlflow_config.configure(settings), name)
    say(f"MLflow at {registry.client.tracking_uri}, model {name!r}")
    if if_missing:
        try:
            current = registry.version_for(R.ALIAS_PRODUCTION)
            say(f"--if-missing: {name}@{R.ALIAS_PRODUCTION} is version {current}; nothing to do")
            return {R.ALIAS_PRODUCTION: current}
        except NotFound:
            pass
    experiment_id = mlflow_config.ensure_experiment(settings)
    data_bytes = data_path.read_bytes()
    wanted = {R.ALIAS_PRODUCTION: production_flavor, R.ALIAS_STAGING: staging_flavor}
    versions, split = {}, None
    for flavor in dict.fromkeys(wanted.values()):
        fp = fingerprint(data_bytes, flavor)
        existing = None if force else find_version(registry, flavor, fp)
        if existing is not None:
            say(f"{flavor}: reusing version {existing} (same training_fingerprint; --force retrains)")
            versions[flavor] = existing
            continue
        split = split or load_split(data_path)
        say(f"fitting {flavor}")
        version, _ = log_and_register(flavor, fit(flavor, split), split, fp, name, experiment_id)
        versions[flavor] = str(version.version)
    for alias, flavor in wanted.items():
        registry.client.set_registered_model_alias(name, alias, versions[flavor])
        say(f"alias {name}@{alias} -> version {versions[flavor]} ({flavor})")
    return {alias: versions[flavor] for alias, flavor in wanted.items()}


def code_version() -> str:
    """The git commit training ran from (`+dirty` with uncommitted changes), or "unknown" outside a checkout."""
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def run_candidate(data_path: pathlib.Path, flavor: str, alias: str, lineage: dict, result_file: pathlib.Path | None,
                  name: str | None = None) -> str:
    """One new version from a prepared CSV (Retrain): fitted, registered with its metrics and lineage (data sets
    and row counts, parent version, code version) and aliased `alias`; always a new version (no fingerprint reuse).
    Writes {"version", "metrics"} to `result_file`."""
    settings = Settings.from_env()
    name = name or settings.model_name
    mlflow_config.quiet()
    progress(5, f"candidate {flavor} from {data_path.name}")
    registry = R.ModelRegistry(mlflow_config.configure(settings), name)
    experiment_id = mlflow_config.ensure_experiment(settings)
    split = load_split(data_path)
    progress(20, f"fitting {flavor} on {len(split.train_idx)} rows")
    model = fit(flavor, split)
    progress(70, "logging and registering the version")
    tags = {"lineage.datasets": json.dumps(lineage.get("datasets", []), sort_keys=True),
            "lineage.rows": str(len(split.data)), "lineage.parent_version": str(lineage.get("parent_version", "")),
            "lineage.code_version": code_version()}
    version, scores = log_and_register(flavor, model, split, fingerprint(data_path.read_bytes(), flavor), name,
                                       experiment_id, lineage=tags)
    registry.set_alias(alias, str(version.version))
    progress(100, f"version {version.version} registered as {name}@{alias}")
    if result_file is not None:
        result_file.write_text(json.dumps({"version": str(version.version), "metrics": scores}))
    return str(version.version)
