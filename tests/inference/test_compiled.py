"""Compiled trees (Treelite + TL2cgen): equal to the native model on every Telco row for both flavours, through
the library's per-row entry and TL2cgen's batch predictor alike (bit for bit with each other, missing values
included, from concurrent threads), cached by version and digest, and a failed compile serves the native model
(logged and counted), never fails a load."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

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


@pytest.fixture(scope="module")
def compiled(versions, tmp_path_factory):
    folder = tmp_path_factory.mktemp("compiled")
    return {alias: compiled_trees.compile_model(
        version.model, folder, compiled_trees.cache_key(version.info.name, version.info.version, version.digest))
        for alias, version in versions.items()}


def batch_predictor(library) -> np.ndarray:
    import tl2cgen

    predictor = tl2cgen.Predictor(str(library), nthread=1)
    return lambda X: np.asarray(predictor.predict(tl2cgen.DMatrix(X, dtype="float32"))).reshape(len(X))


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_the_per_row_entry_equals_native_and_the_batch_predictor(versions, compiled, telco_rows, alias):
    served = compiled[alias]
    rows = compiled_trees.RowFunction(served.library)
    native = np.asarray(versions[alias].model.probability(telco_rows), dtype=np.float64)
    every_row = rows(telco_rows)
    np.testing.assert_allclose(np.asarray(every_row, dtype=np.float64), native, rtol=0, atol=1e-6)
    assert every_row.dtype == batch_predictor(served.library)(telco_rows[:2]).dtype
    np.testing.assert_array_equal(every_row, batch_predictor(served.library)(telco_rows))
    step = compiled_trees.ROW_CALLS_UP_TO  # the sizes the request path sends to the per-row entry, as served
    small = np.concatenate([served.probability(telco_rows[start:start + step])
                            for start in range(0, len(telco_rows), step)])
    np.testing.assert_array_equal(small, every_row)


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_missing_values_take_the_trees_default_branch(versions, compiled, telco_rows, alias):
    """The encoders never produce NaN, but a NaN reaching the trees is a missing value, marked as TL2cgen marks
    it: the same answers as its batch predictor (and as xgboost, which reads NaN as missing too)."""
    X = telco_rows[:500].copy()
    X[np.random.default_rng(7).random(X.shape) < 0.2] = np.nan
    X[0] = np.nan
    got = compiled_trees.RowFunction(compiled[alias].library)(X)
    np.testing.assert_array_equal(got, batch_predictor(compiled[alias].library)(X))
    if versions[alias].model.flavor == "xgboost":
        native = np.asarray(versions[alias].model.probability(X), dtype=np.float64)
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), native, rtol=0, atol=1e-6)
    clean = compiled_trees.RowFunction(compiled[alias].library)(telco_rows[1:2])  # the buffers hold no NaN after
    np.testing.assert_array_equal(clean, batch_predictor(compiled[alias].library)(telco_rows[1:2]))


def test_concurrent_threads_each_score_their_own_rows(compiled, telco_rows):
    """Serving threads call the per-row entry at once (ctypes lets go of the GIL in the trees): each thread's row
    buffer is its own, so every answer belongs to its row."""
    served = compiled["production"]
    expected = batch_predictor(served.library)(telco_rows[:2000])
    chunks = [range(start, start + 250) for start in range(0, 2000, 250)] * 3

    def score(chunk: range) -> np.ndarray:
        return np.concatenate([served.probability(telco_rows[i:i + 1]) for i in chunk])

    with ThreadPoolExecutor(8) as pool:
        for chunk, got in zip(chunks, pool.map(score, chunks)):
            np.testing.assert_array_equal(got, expected[chunk.start:chunk.stop])


def test_the_per_row_entry_refuses_a_wrong_width(compiled, telco_rows):
    with pytest.raises(ValueError, match="41 features"):
        compiled_trees.RowFunction(compiled["production"].library)(telco_rows[:, :40])


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
