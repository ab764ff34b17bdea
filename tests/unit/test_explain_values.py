"""Explain's field values in the Telco CSV spelling: decoded column by column for a whole batch, they equal the
per-row decoding (`explain.field_value`, what top-k reasons use) cell for cell — on every Telco row and on random
valid encodings whose numbers go beyond the Telco data (fractions the data lacks, sizes up to the input bounds)."""
from __future__ import annotations

import pathlib

import numpy as np

from services.common import compiled_trees
from services.common import features as F
from services.common.telco_csv import parse_telco_csv
from services.inference import explain

DATA = pathlib.Path(__file__).resolve().parents[2] / "data" / "telco_churn.csv"


def per_row(X: np.ndarray) -> list[list[str]]:
    return [[explain.field_value(X[r], i) for i in range(len(F.FEATURES))] for r in range(len(X))]


def test_column_decoding_equals_the_per_row_decoding_on_every_telco_row():
    X = parse_telco_csv(DATA.read_bytes(), None, 10_000).encoded
    assert X.shape == (7043, F.N_ENCODED)
    got = explain.rows_values(X)
    assert [list(row) for row in got] == per_row(X)
    spelled = dict(zip(F.FEATURE_NAMES, zip(*got)))
    assert set(spelled["contract"]) == {"Month-to-month", "One year", "Two year"}
    assert set(spelled["senior_citizen"]) == {"0", "1"}
    assert "29.85" in spelled["monthly_charges"] and "1" in spelled["tenure"]  # the first customer, as in the CSV


def test_column_decoding_equals_the_per_row_decoding_beyond_the_telco_data():
    X = compiled_trees.probe_matrix(rows=3000, seed=11)
    rng = np.random.default_rng(11)
    numeric = [i for i, f in enumerate(F.FEATURES) if f.kind == F.NUMERIC]
    for i in numeric:
        column = F.ENCODED_COLUMNS.index(F.FEATURES[i].name)
        bound = F.NUMERIC_MAX[F.FEATURES[i].name]
        X[:1000, column] = rng.uniform(0, bound, 1000)                      # any float32, up to the bound
        X[1000:1100, column] = rng.uniform(0, 1e-3, 100)                    # tiny fractions
        X[1100:1110, column] = [0, bound, 1, 10, 100, 1e-5, 0.1, 1e6, 5e7, 0.5]
        if F.FEATURES[i].name == "tenure":
            X[:, column] = np.floor(X[:, column])                           # tenure is whole months
    assert [list(row) for row in explain.rows_values(X)] == per_row(X)


def test_no_rows_decode_to_no_values():
    assert explain.rows_values(np.zeros((0, F.N_ENCODED), dtype=np.float32)) == []
