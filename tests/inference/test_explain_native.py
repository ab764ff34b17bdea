"""What Explain asks of the native models, on every Telco row of both registered flavours: TreeSHAP cut into
chunks over a pool equals one call of the bare library bit for bit, and the probability taken from the margin is
the same bits the model's own probability gives."""
from __future__ import annotations

import numpy as np
import pytest

from services.common.telco_csv import parse_telco_csv
from tests import natives as natives_
from tests.inference.conftest import TELCO_CSV


@pytest.fixture(scope="module")
def telco_rows() -> np.ndarray:
    return parse_telco_csv(TELCO_CSV.read_bytes(), None, 10_000).encoded


@pytest.fixture(scope="module")
def versions(registry, tmp_path_factory):
    """{alias: (the served native model, the raw estimator loaded by hand)}."""
    out = {}
    for alias in ("production", "staging"):
        _, root = natives_.download(registry, alias, tmp_path_factory.mktemp(alias))
        out[alias] = (registry.load(registry.version_for(alias)).model, natives_.raw_native(root))
    return out


@pytest.mark.parametrize("alias", ["production", "staging"])
def test_probability_from_the_margin_is_the_models_own(versions, telco_rows, alias):
    model, _ = versions[alias]
    assert len(telco_rows) == 7043
    margin, probability = model.margin_and_probability(telco_rows)
    assert np.array_equal(margin, model.margin(telco_rows))
    own = model.probability(telco_rows)
    assert probability.dtype == own.dtype and np.array_equal(probability, own)
    for start in range(0, 200, 7):  # the small batches too (xgboost's one-thread booster)
        rows = telco_rows[start:start + 7]
        assert np.array_equal(model.margin_and_probability(rows)[1], model.probability(rows))


def test_chunked_treeshap_equals_one_bare_call(versions, telco_rows):
    import xgboost

    model, (flavor, booster) = versions["production"]
    assert flavor == "xgboost" and len(telco_rows) > 10 * model.EXPLAIN_CHUNK
    bare = booster.predict(xgboost.DMatrix(telco_rows), pred_contribs=True)
    for rows in (telco_rows, telco_rows[:model.EXPLAIN_CHUNK], telco_rows[:model.EXPLAIN_CHUNK + 1], telco_rows[:1]):
        values, base = model.contributions(rows)
        assert np.array_equal(values, bare[:len(rows), :-1]) and np.array_equal(base, bare[:len(rows), -1])


def test_concurrent_explanations_get_their_own_rows(versions, telco_rows):
    """The pool is shared by every request thread: concurrent calls must not mix their chunks."""
    from concurrent.futures import ThreadPoolExecutor

    model, _ = versions["production"]
    slices = [telco_rows[i * 500:(i + 1) * 500] for i in range(6)]
    expected = [model.contributions(rows)[0] for rows in slices]
    with ThreadPoolExecutor(6) as callers:
        got = list(callers.map(lambda rows: model.contributions(rows)[0], slices))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected))
