"""The registered model's layout, shared by training (writes it), inference and monitoring (read it).

One registered model (env `MODEL_NAME`, default `churn-model`) holds every version; aliases `production` and
`staging` pick the versions the two inference instances serve. Each version is a custom `mlflow.pyfunc` model
(a LoggedModel, source `models:/m-…`) whose directory, as `download_version_artifacts` returns it, is:

    MLmodel, python_model.pkl, requirements.txt, …   the pyfunc (takes raw Telco columns, returns P(churn))
    code/services/common/{features,telco_csv,errors}.py, code/churn/v1/*_pb2.py, code/training/   (code_paths)
    artifacts/model_info.json        {"flavor", "native_model", "training_fingerprint", "metrics", "threshold", …}
    artifacts/model.json             xgboost: Booster.save_model JSON (load with xgboost.Booster().load_model)
    artifacts/model.joblib           sklearn: the fitted tree ensemble (joblib.load; shap TreeExplainer supports it)
    artifacts/feature_spec.json      services.common.features.feature_spec(): columns, vocabularies, encoded order
    artifacts/reference/train.csv    the raw training split: Telco columns + Churn, NO customerID (drift reference)
    artifacts/reference/holdout.csv  the held-out split: customerID + Telco columns + Churn ("no drift" windows,
                                     feedback tests); both CSVs parse with services.common.telco_csv

Native models take `services.common.features` encodings (float32, `ENCODED_COLUMNS` order) and give P(churn):
xgboost `booster.inplace_predict(X)`, sklearn `model.predict_proba(X)[:, 1]`. Version tags: `flavor`
(xgboost|sklearn) and `training_fingerprint` (sha256 of data + params + flavor + feature spec).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

ALIAS_PRODUCTION, ALIAS_STAGING = "production", "staging"
FLAVORS = ("xgboost", "sklearn")
TAG_FLAVOR, TAG_FINGERPRINT = "flavor", "training_fingerprint"

ARTIFACTS_DIR = "artifacts"
MODEL_INFO = f"{ARTIFACTS_DIR}/model_info.json"
FEATURE_SPEC = f"{ARTIFACTS_DIR}/feature_spec.json"
REFERENCE_TRAIN = f"{ARTIFACTS_DIR}/reference/train.csv"
REFERENCE_HOLDOUT = f"{ARTIFACTS_DIR}/reference/holdout.csv"
NATIVE_MODEL = {"xgboost": f"{ARTIFACTS_DIR}/model.json", "sklearn": f"{ARTIFACTS_DIR}/model.joblib"}


def resolve_version(client, name: str, version_or_alias: str):
    """The ModelVersion for a version number ("3") or an alias ("production"); MlflowException if none."""
    ref = str(version_or_alias)
    return client.get_model_version(name, ref) if ref.isdigit() else client.get_model_version_by_alias(name, ref)


def download_version_artifacts(client, name: str, version_or_alias: str, dst: str | pathlib.Path) -> pathlib.Path:
    """Download a registered version's whole model directory (layout above) into `dst`; returns its root."""
    from mlflow.artifacts import download_artifacts

    version = resolve_version(client, name, version_or_alias)
    dst = pathlib.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    source = client.get_model_version_download_uri(name, version.version)  # the LoggedModel's artifact folder
    path = download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=client.tracking_uri)
    return pathlib.Path(path)


def read_model_info(root: str | pathlib.Path) -> dict[str, Any]:
    """`artifacts/model_info.json` of a downloaded version (flavor, native model path, fingerprint, metrics)."""
    return json.loads((pathlib.Path(root) / MODEL_INFO).read_text())


def load_native_model(root: str | pathlib.Path):
    """(flavor, model) from a downloaded version: an xgboost Booster or the fitted sklearn estimator."""
    root = pathlib.Path(root)
    flavor = read_model_info(root)["flavor"]
    path = root / NATIVE_MODEL[flavor]
    if flavor == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(path))
        return flavor, booster
    import joblib

    return flavor, joblib.load(path)


def predict_proba(flavor: str, model, X) -> Any:
    """P(churn) per row of an encoded float32 matrix, for either native flavour."""
    if flavor == "xgboost":
        return model.inplace_predict(X)
    return model.predict_proba(X)[:, 1]
