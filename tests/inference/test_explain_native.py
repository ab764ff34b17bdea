"""What Explain asks of the native models, on every Telco row of both registered flavours: the probability taken
from the margin is the same bits the model's own probability gives."""
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
