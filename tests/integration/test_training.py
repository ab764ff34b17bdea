"""`python -m training` end to end on the real Telco data, read from the suite-wide registry that
tests/conftest.py's `trained_registry` trains once per session (rerunning it must reuse, never retrain)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import urllib.parse

import numpy as np
import pytest

from services.common import features as F
from services.common import mlflow_config
from services.common.telco_csv import parse_telco_csv
from services.common import model_registry as R
from tests import natives

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def run_training(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "training", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def trained(trained_registry, settings):
    """The suite-wide registry (tests/conftest.py trains it once per run): (env, model name)."""
    return trained_registry, settings.model_name


@pytest.fixture(scope="module")
def registry(trained, settings) -> R.ModelRegistry:
    return R.ModelRegistry(mlflow_config.tracking_uri(settings), trained[1])


@pytest.fixture(scope="module")
def client(registry):
    return registry.client


def test_both_versions_registered_with_aliases_and_metrics(trained, client):
    _, name = trained
    production = client.get_model_version_by_alias(name, R.ALIAS_PRODUCTION)
    staging = client.get_model_version_by_alias(name, R.ALIAS_STAGING)
    assert production.tags[R.TAG_FLAVOR] == "xgboost" and staging.tags[R.TAG_FLAVOR] == "sklearn"
    assert production.version != staging.version and production.tags[R.TAG_FINGERPRINT]
    assert production.source.startswith("models:/m-")
    for version, floor in ((production, 0.83), (staging, 0.80)):
        metrics = client.get_run(version.run_id).data.metrics
        assert set(metrics) >= {"roc_auc", "f1", "precision", "recall", "accuracy", "log_loss"}
        assert metrics["roc_auc"] >= floor, metrics
    # artifacts in an absolute folder under the training's DATA_DIR (tests/conftest.py's, copied registry or not)
    location = client.get_experiment(client.get_run(production.run_id).info.experiment_id).artifact_location
    folder = pathlib.Path(urllib.parse.urlparse(location).path)
    assert location.startswith("file:///") and folder.parts[-2:] == ("var", "mlartifacts") and folder.is_dir()


def test_artifacts_download_through_the_registry(trained, registry, tmp_path):
    _, root = natives.download(registry, "production", tmp_path / "prod")
    for path in (R.MODEL_INFO, R.FEATURE_SPEC, R.REFERENCE_TRAIN, R.REFERENCE_HOLDOUT, R.NATIVE_MODEL["xgboost"],
                 "MLmodel"):
        assert (root / path).is_file(), path
    assert R.read_model_info(root)["flavor"] == "xgboost"
    assert json.loads((root / R.FEATURE_SPEC).read_text())["encoded_columns"] == list(F.ENCODED_COLUMNS)
    train = parse_telco_csv((root / R.REFERENCE_TRAIN).read_bytes(), 1 << 30, 100_000)
    holdout = parse_telco_csv((root / R.REFERENCE_HOLDOUT).read_bytes(), 1 << 30, 100_000)
    assert (len(train), len(holdout)) == (5634, 1409)
    assert train.customer_ids[0] == "" and holdout.customer_ids[0] and holdout.churn is not None
    _, staging_root = natives.download(registry, "staging", tmp_path / "stg")
    assert (staging_root / R.NATIVE_MODEL["sklearn"]).is_file()


def test_rerun_reuses_versions_and_if_missing_does_nothing(trained, client, registry):
    env, name = trained
    before = {v.version for v in client.search_model_versions(f"name = '{name}'")}
    staging = registry.version_for("staging")
    rerun = run_training(env)
    assert "reusing version" in rerun and f"alias {name}@staging -> version {staging} (sklearn)" in rerun
    assert "nothing to do" in run_training(env, "--if-missing")
    try:
        out = run_training(env, "--staging-flavor", "xgboost")
        assert registry.get(registry.version_for("staging")).flavor == "xgboost"
        assert {v.version for v in client.search_model_versions(f"name = '{name}'")} == before, out
    finally:  # the suite-wide registry: every other test expects the default aliases
        run_training(env)
    assert registry.version_for("staging") == staging


@pytest.fixture(scope="module")
def fresh_pyfunc(trained, settings, tmp_path_factory) -> dict[str, tuple[list[float], str]]:
    """{alias: (P(churn) of rows 480-519, the file its features module came from)}: each alias's registered pyfunc
    loaded and called in one fresh interpreter outside the repo, without gen/ or the repo on its path. MLflow keeps
    the first model's modules when it loads the next one, so the script forgets them (and that code/ on sys.path)
    before each load: each version runs on its own copy of the code, as in an interpreter of its own."""
    env, name = trained
    rows = ROOT / "data" / "telco_churn.csv"
    script = (
        "import sys, json\n"
        f"sys.path = [p for p in sys.path if p not in ({str(ROOT)!r}, {str(ROOT / 'gen')!r})]\n"
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow_config.tracking_uri(settings)!r})\n"
        f"df = pd.read_csv({str(rows)!r}, dtype={{'TotalCharges': str}}).iloc[480:520]\n"
        "df['TotalCharges'] = pd.to_numeric(df['TotalCharges'].str.strip(), errors='coerce')\n"
        "out = {}\n"
        "for alias in ('production', 'staging'):\n"
        f"    m = mlflow.pyfunc.load_model(f'models:/{name}@{{alias}}')\n"
        "    p = [float(p) for p in m.predict(df.drop(columns=['customerID', 'Churn']))]\n"
        "    out[alias] = (p, sys.modules['services.common.features'].__file__)\n"
        "    code = [path for path in sys.path if path.endswith('/code')]\n"
        "    sys.path = [path for path in sys.path if path not in code]\n"
        "    for module in [k for k in sys.modules if k == 'services' or k.startswith('services.')]:\n"
        "        del sys.modules[module]\n"
        "print(json.dumps(out))\n"
    )
    clean_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path_factory.mktemp("pyfunc"), env=clean_env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_pyfunc_in_a_fresh_process_matches_the_native_model(fresh_pyfunc, registry, alias, tmp_path):
    probabilities, features_file = fresh_pyfunc[alias]
    assert "/code/services/common/features.py" in features_file and not features_file.startswith(str(ROOT / "services"))
    assert fresh_pyfunc["production"][1] != fresh_pyfunc["staging"][1]  # each version's own copy of the code
    pyfunc = np.array(probabilities)

    _, root = natives.download(registry, alias, tmp_path / "native")
    flavor, model = natives.raw_native(root)
    rows = ROOT / "data" / "telco_churn.csv"
    parsed = parse_telco_csv(rows.read_bytes(), 1 << 30, 100_000)
    native = natives.raw_probability(flavor, model, F.encode_customers(parsed.customers()[480:520]))
    assert pyfunc.shape == (40,) and ((0 < pyfunc) & (pyfunc < 1)).all()
    np.testing.assert_allclose(pyfunc, native, atol=1e-6)
