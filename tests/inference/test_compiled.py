"""Compiled trees (Treelite + TL2cgen): equal to the native model on every Telco row for both flavours, cached
by version and digest, and a failed compile serves the native model (logged and counted), never fails a load."""
from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY

from services.common import compiled_trees
from services.common.telco_csv import parse_telco_csv
from services.inference.model import loaded_model
from tests.inference.conftest import TELCO_CSV


@pytest.fixture(scope="module")
def telco_rows() -> np.ndarray:
    data = TELCO_CSV.read_bytes()
    return parse_telco_csv(data, None, 10_000).encoded


@pytest.fixture(scope="module")
def versions(registry):
    return {alias: registry.load(registry.version_for(alias)) for alias in ("production", "staging")}


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_compiled_equals_native_on_all_rows(versions, telco_rows, tmp_path, alias):
    version = versions[alias]
    key = compiled_trees.cache_key(version.info.name, version.info.version, version.digest)
    compiled = compiled_trees.compile_model(version.model, tmp_path, key)
    only_compiled = compiled_trees.CompiledModel(version.model, compiled.library, native_above=None)
    assert len(telco_rows) == 7043
    native = np.asarray(version.model.probability(telco_rows), dtype=np.float64)
    for start in range(0, len(telco_rows), 100):  # the sizes the request path sends to the compiled trees
        got = np.asarray(only_compiled.probability(telco_rows[start:start + 100]), dtype=np.float64)
        np.testing.assert_allclose(got, native[start:start + 100], rtol=0, atol=1e-6)
    np.testing.assert_allclose(compiled.probability(telco_rows), native, rtol=0, atol=1e-6)  # any size, as served


def test_the_library_is_cached_per_version_and_digest(versions, tmp_path):
    version = versions["production"]
    key = compiled_trees.cache_key(version.info.name, version.info.version, version.digest)
    first = compiled_trees.compile_model(version.model, tmp_path, key)
    built_at = first.library.stat().st_mtime_ns
    again = compiled_trees.compile_model(version.model, tmp_path, key)
    assert again.library == first.library and again.library.stat().st_mtime_ns == built_at
    other = compiled_trees.cache_key(version.info.name, version.info.version, "0" * 64)
    assert other != key and version.digest[:16] in key


def test_the_served_model_is_compiled(versions, tmp_path):
    served = loaded_model(versions["staging"], "staging", tmp_path)
    assert isinstance(served.native, compiled_trees.CompiledModel) and served.native.library.is_file()


def test_a_failed_compile_serves_the_native_model_and_counts_it(versions, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    labels = {"flavor": "xgboost"}
    before = REGISTRY.get_sample_value("churn_inference_compile_failures_total", labels) or 0.0
    served = loaded_model(versions["production"], "production", blocked)
    assert served.native is versions["production"].model
    assert REGISTRY.get_sample_value("churn_inference_compile_failures_total", labels) == before + 1
