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


def copy_model(registry: R.ModelRegistry, name: str) -> list[str]:
    """A new registered model `name` whose v1 is production's artifacts (xgboost) and v2 staging's (sklearn),
    with `production` on v1: tests that move aliases do it there, never on the suite's shared model."""
    client = registry.client
    client.create_registered_model(name)
    versions = []
    for alias in (R.ALIAS_PRODUCTION, R.ALIAS_STAGING):
        source = client.get_model_version_by_alias(registry.name, alias)
        location = client.get_model_version_download_uri(registry.name, source.version)  # the artifact folder
        created = client.create_model_version(name, location, run_id=source.run_id, tags=source.tags)
        versions.append(str(created.version))
    client.set_registered_model_alias(name, R.ALIAS_PRODUCTION, versions[0])
    return versions
