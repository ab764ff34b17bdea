"""Every setting comes through `Settings`: the defaults match what each caller used to read from the environment,
and the callers (port file, service token, MLflow location) take their values from a Settings object."""
import json
import pathlib

from services.common import mlflow_config
from services.common.interceptor import ServiceInterceptor
from services.common.server import start_server
from services.common.settings import Settings
from services.inference.shipper import ServiceToken
from tests.tokens import LocalKeys


def test_process_settings_default_like_before(tmp_path):
    settings = Settings.from_env({"DATA_DIR": str(tmp_path)})
    assert (settings.port_file, settings.service_token, settings.admin_username, settings.admin_password) == \
        ("", "", "", "")
    assert (settings.log_level, settings.mlflow_tracking_uri, settings.mlflow_experiment_name) == ("INFO", "", "churn")


def test_process_settings_read_their_variables(tmp_path):
    settings = Settings.from_env({
        "DATA_DIR": str(tmp_path), "PORT_FILE": "/run/p.json", "SERVICE_TOKEN": "tok", "ADMIN_USERNAME": "root",
        "ADMIN_PASSWORD": "pw", "LOG_LEVEL": "DEBUG", "MLFLOW_TRACKING_URI": "http://mlflow:5000",
        "MLFLOW_EXPERIMENT_NAME": "exp"})
    assert (settings.port_file, settings.service_token, settings.admin_username, settings.admin_password,
            settings.log_level, settings.mlflow_tracking_uri, settings.mlflow_experiment_name) == \
        ("/run/p.json", "tok", "root", "pw", "DEBUG", "http://mlflow:5000", "exp")
    assert "admin_password=" not in repr(settings) and "service_token=" not in repr(settings)  # secrets stay out of logs


def test_mlflow_location_comes_from_settings(tmp_path):
    data_dir = tmp_path / "var"
    local = Settings.from_env({"DATA_DIR": str(data_dir)})
    assert mlflow_config.tracking_uri(local) == f"sqlite:///{data_dir.resolve() / 'mlflow.db'}" and data_dir.is_dir()
    assert mlflow_config.artifact_root(local) == data_dir.resolve() / "mlartifacts"
    server = Settings.from_env({"DATA_DIR": str(data_dir), "MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert mlflow_config.tracking_uri(server) == "http://mlflow:5000"


def test_compiled_trees_are_cached_under_data_dir_unless_a_shared_folder_is_set(tmp_path):
    from services.inference.app import build_parts

    default = Settings.from_env({"DATA_DIR": str(tmp_path / "var")})
    assert default.compiled_cache_dir == (tmp_path / "var").resolve() / "compiled"
    shared = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "COMPILED_MODELS_DIR": str(tmp_path / "shared")})
    assert shared.compiled_cache_dir == (tmp_path / "shared").resolve()
    assert build_parts(shared, "production", ship=False).compiled_dir == (tmp_path / "shared").resolve()
    off = Settings.from_env({"DATA_DIR": str(tmp_path / "var"), "COMPILED_MODELS_DIR": str(tmp_path / "shared"),
                             "COMPILE_MODELS": "false"})
    assert build_parts(off, "production", ship=False).compiled_dir is None


def test_service_token_setting_wins_over_the_file(tmp_path):
    (tmp_path / "service_token").write_text("from-file\n")
    assert ServiceToken.from_settings(Settings.from_env({"SECRETS_DIR": str(tmp_path)})).get() == "from-file"
    configured = Settings.from_env({"SECRETS_DIR": str(tmp_path), "SERVICE_TOKEN": " from-setting "})
    assert ServiceToken.from_settings(configured).get() == "from-setting"


def test_monitoring_reloads_with_its_own_credential_from_the_setting_or_the_file(tmp_path):
    """No credential → NotReady saying where it would come from; the file (re-read when it changes) or the
    setting (which wins) → the token goes to the instance (here none listens: the refusal names the address)."""
    import pytest

    from services.common.errors import NotReady
    from services.monitoring.reloader import InferenceReloader

    base = {"SECRETS_DIR": str(tmp_path), "DATA_DIR": str(tmp_path), "INFERENCE_STAGING_PORT": "1"}
    with pytest.raises(NotReady, match="no credential of its own.*MONITORING_TOKEN.*monitoring_token"):
        InferenceReloader(Settings.from_env(base)).reload("staging")
    (tmp_path / "monitoring_token").write_text("from-file\n")
    with pytest.raises(NotReady, match="at 127.0.0.1:1 did not reload: UNAVAILABLE"):
        InferenceReloader(Settings.from_env(base), timeout=5).reload("staging")
    assert "monitoring_token=" not in repr(Settings.from_env(dict(base, MONITORING_TOKEN="tok")))


def test_the_port_file_is_the_setting(tmp_path):
    target = tmp_path / "ports.json"
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "PORT_FILE": str(target)})
    host = start_server(settings, port=0, http_port=0, register=lambda server: None, service_names=[],
                        interceptor=ServiceInterceptor(LocalKeys().verifier(), "k", "o"))
    try:
        assert json.loads(pathlib.Path(target).read_text()) == {"grpc": host.port, "http": host.http_port}
    finally:
        host.stop(0)
