"""Session-wide fixtures shared by every test folder: a self-contained environment and a trained registry.

Service folders add their own fixtures in tests/<folder>/conftest.py; the whole suite behind Envoy lives in
tests/e2e/conftest.py.
"""
from __future__ import annotations

import os

import pytest

from tests.harness import base_env, run_module


@pytest.fixture(scope="session")
def suite_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("suite")


@pytest.fixture(scope="session")
def suite_env(suite_workdir) -> dict[str, str]:
    """Environment for every process of the test suite (its own DATA_DIR, keys, ephemeral ports)."""
    return base_env(suite_workdir)


@pytest.fixture(scope="session")
def trained_registry(suite_env) -> dict[str, str]:
    """Train once per session into the suite's own MLflow registry (sqlite under its DATA_DIR)."""
    run_module("training", suite_env, timeout=600)
    return suite_env


@pytest.fixture(scope="session")
def is_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"
