"""SHAP values per encoded column, aggregated back to the customer's own fields, and top-k reasons.

The model sees one-hot columns (`contract=Month-to-month`, …); an agent thinks in fields (`contract`). SHAP is
additive, so a field's contribution is the sum over its encoded columns, and base + Σ fields = the model's margin
still holds. Values are reported in the Telco CSV spelling, decoded from the encoded row the model actually saw.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from services.common import features as F

# (N_ENCODED, n_features) 0/1 matrix: contributions @ _FOLD sums each field's encoded columns.
_FOLD = np.zeros((F.N_ENCODED, len(F.FEATURES)), dtype=np.float64)
_FOLD[np.arange(F.N_ENCODED), F.ENCODED_FEATURE_INDEX] = 1.0
_SLICES = []
_start = 0
for _f in F.FEATURES:
    _SLICES.append(slice(_start, _start + len(_f.encoded_names)))
    _start += len(_f.encoded_names)


@dataclasses.dataclass(frozen=True)
class Contributions:
    """Per-row SHAP in margin space: `fields` (n, n_features) in `features.FEATURES` order, `base` (n,)."""

    fields: np.ndarray
    base: np.ndarray

    @property
    def margin(self) -> np.ndarray:
        return self.base + self.fields.sum(axis=1)


def fold(encoded_contributions: np.ndarray, base: np.ndarray | float) -> Contributions:
    """Sum encoded-column SHAP values (n, N_ENCODED) into per-field values."""
    values = np.asarray(encoded_contributions, dtype=np.float64)
    if values.shape[1] != F.N_ENCODED:
        raise ValueError(f"expected {F.N_ENCODED} encoded columns, got {values.shape[1]}")
    fields = values @ _FOLD
    return Contributions(fields, np.broadcast_to(np.asarray(base, dtype=np.float64), (len(values),)).copy())


def _number(value: float, whole: bool) -> str:
    if whole:
        return str(int(value))
    return np.format_float_positional(np.float32(value), trim="-")


def field_value(row: np.ndarray, index: int) -> str:
    """The value of feature `index` in the CSV spelling, decoded from one encoded row."""
    spec = F.FEATURES[index]
    cells = row[_SLICES[index]]
    if spec.kind == F.CATEGORICAL:
        return spec.categories[int(np.argmax(cells))]
    if spec.kind == F.BOOLEAN:
        return spec.categories[int(cells[0] >= 0.5)]
    return _number(float(cells[0]), whole=spec.name == "tenure")


def _column_values(X: np.ndarray, index: int) -> list[str]:
    """`field_value` of feature `index` for every row of X at once: categories picked by one argmax over the
    block, each distinct number formatted once."""
    spec = F.FEATURES[index]
    cells = X[:, _SLICES[index]]
    if spec.kind == F.CATEGORICAL:
        return [spec.categories[i] for i in cells.argmax(axis=1).tolist()]
    if spec.kind == F.BOOLEAN:
        return [spec.categories[i] for i in (cells[:, 0] >= 0.5).tolist()]
    distinct, where = np.unique(cells[:, 0], return_inverse=True)
    spelled = [_number(float(v), whole=spec.name == "tenure") for v in distinct.tolist()]
    return [spelled[i] for i in where.tolist()]


def rows_values(X: np.ndarray) -> list[tuple[str, ...]]:
    """`field_value` of every cell of X, decoded column by column (a full explanation of a large batch spells
    19 values a row: per row and per cell that was the largest cost beside TreeSHAP itself)."""
    return list(zip(*(_column_values(X, i) for i in range(len(F.FEATURES)))))


def top_reasons(contributions: Contributions, X: np.ndarray, k: int) -> list[list[tuple[str, str, float]]]:
    """Per row, the k fields with the largest |contribution|: (field, value in CSV spelling, contribution)."""
    k = min(k, len(F.FEATURES))
    if k <= 0:
        return [[] for _ in range(len(X))]
    order = np.argsort(-np.abs(contributions.fields), axis=1, kind="stable")[:, :k]
    return [[(F.FEATURE_NAMES[i], field_value(X[r], i), float(contributions.fields[r, i])) for i in order[r]]
            for r in range(len(X))]
