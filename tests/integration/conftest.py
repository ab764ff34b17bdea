"""Fixtures for tests that run real pipelines (training into a throwaway MLflow registry)."""
from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: runs a real pipeline end to end (slower, seconds to a minute)")
