"""Registered versions as a test reads them: downloaded through the registry, with the raw estimator loaded by hand
(not through the wrapper the services use), so tests compare the services against an independent reference."""
from __future__ import annotations

import json
import pathlib

import numpy as np

from services.common import model_registry as R


def raw_native(root: pathlib.Path) -> tuple[str, object]:
    """(flavor, estimator) of a downloaded version: an xgboost Booster or the fitted scikit-learn ensemble."""
    flavor = json.loads((root / R.MODEL_INFO).read_text())["flavor"]
    if flavor == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(root / R.NATIVE_MODEL[flavor]))
        return flavor, booster
    import joblib

    return flavor, joblib.load(root / R.NATIVE_MODEL[flavor])


def raw_probability(flavor: str, model, X: np.ndarray) -> np.ndarray:
    if flavor == "xgboost":
        return model.inplace_predict(X)
    return model.predict_proba(X)[:, 1]


def download(registry: R.ModelRegistry, alias: str, dst: pathlib.Path) -> tuple[str, pathlib.Path]:
    """(version, directory) of the version an alias points at."""
    version = registry.version_for(alias)
    return version, registry.download(version, dst)
