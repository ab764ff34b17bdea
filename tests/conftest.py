"""Session-wide fixtures shared by every test folder: a self-contained environment and a trained registry.

Service folders add their own fixtures in tests/<folder>/conftest.py; the whole suite behind Envoy lives in
tests/e2e/conftest.py.
"""
from __future__ import annotations

import fcntl
import os
import pathlib
import shutil

import pytest

from services.common.settings import Settings
from tests import internal_guard
from tests.harness import base_env, run_module
from tests.pg import PrivateCluster, own_database
from tests.tokens import LocalKeys


@pytest.fixture(autouse=True)
def no_internal_answers(request):
    """Every test ends with each service's INTERNAL count where it was: a test that caused one fails by name.
    Tests marked `internal_expected` provoke one on purpose, and must see it counted."""
    before = internal_guard.LEDGER.totals()
    yield
    grown = internal_guard.grown(before, internal_guard.LEDGER.totals())
    if request.node.get_closest_marker("internal_expected"):
        assert grown, "the test provokes an INTERNAL answer, but none was counted"
    elif grown:
        pytest.fail(f"INTERNAL answers during {request.node.nodeid}: {grown}", pytrace=False)


@pytest.fixture(scope="session")
def run_root(tmp_path_factory) -> pathlib.Path:
    """The folder every xdist worker of this run shares (pytest's base temp; a worker's own is <run>/popen-gwN)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def shared_compiled_trees(run_root):
    """One COMPILED_MODELS_DIR for every process this run starts (both xdist workers): the cache is keyed by the
    model file's digest, so gcc compiles each model once per run instead of once per inference start (~20 starts)."""
    os.environ["COMPILED_MODELS_DIR"] = str(run_root / "compiled-trees")


@pytest.fixture(scope="session")
def suite_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("suite")


@pytest.fixture(scope="session")
def suite_env(suite_workdir) -> dict[str, str]:
    """Environment for every process of the test suite (its own DATA_DIR, keys, ephemeral ports)."""
    return base_env(suite_workdir)


@pytest.fixture(scope="session")
def trained_registry(suite_env, run_root) -> dict[str, str]:
    """The suite's own MLflow registry (sqlite under its DATA_DIR), a copy of one trained once per run: training is
    deterministic and costs ~15 s of CPU, so the first xdist worker trains (under a file lock) and the others copy
    its database. Aliases and versions then move in each worker's copy only; the artifacts stay in the trained
    registry's folder (new versions add theirs beside them, under ids of their own)."""
    trained = run_root / "registry"
    with open(run_root / "registry.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (trained / "trained").exists():
            run_module("training", base_env(trained), timeout=600)
            (trained / "trained").touch()
    shutil.copy(trained / "var" / "mlflow.db", pathlib.Path(suite_env["DATA_DIR"]) / "mlflow.db")
    return suite_env


@pytest.fixture(scope="session")
def keys() -> LocalKeys:
    """A local ES256 signer for contract tests that run a service without the auth service."""
    return LocalKeys()


@pytest.fixture(scope="session")
def settings(trained_registry) -> Settings:
    """Settings as the suite's processes see them (with a trained registry behind them)."""
    return Settings.from_env(trained_registry)


@pytest.fixture(scope="session")
def is_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def postgres_url(is_ci):
    """A fresh PostgreSQL database for this run on the machine's server (TEST_DATABASE_URL, default the local
    trust-auth server), dropped afterwards. Unreachable: skipped locally, a failure under CI=true."""
    import sqlalchemy as sa

    admin_url = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the server decides skip/fail below
        if is_ci:
            pytest.fail(f"PostgreSQL at {admin_url} is unreachable under CI=true: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    admin.dispose()
    with own_database(admin_url, "churn_test") as url:
        yield url


@pytest.fixture
def private_postgres(is_ci):
    """A PostgreSQL server of the test's own (tests/pg.py), started; for tests that stop and start it. Missing
    initdb/pg_ctl: skipped locally, a failure under CI=true."""
    if not PrivateCluster.available():
        if is_ci:
            pytest.fail("initdb/pg_ctl not found (PG_BIN) under CI=true")
        pytest.skip("initdb/pg_ctl not found (PG_BIN)")
    from tests.e2e.envoy_process import free_port

    cluster = PrivateCluster(free_port())
    try:
        yield cluster.start()
    finally:
        cluster.remove()


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true a run in which no test passed (everything skipped or deselected) fails with pytest's
    "no tests" exit code 5, like a run that collected none: a green CI means tests ran."""
    if os.environ.get("CI", "").lower() != "true" or exitstatus != pytest.ExitCode.OK:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and not reporter.stats.get("passed"):
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
