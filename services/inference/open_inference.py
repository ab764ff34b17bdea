"""The churn model as an Open Inference Protocol (KServe v2) model: its tensor metadata, readiness, and inference
on either input form, scored and logged by the same Predictor as Predict (same validation, same outbox rows).

Inputs, one form per request:
- `features`: FP32 [N, 41], the encoded matrix in `features.ENCODED_COLUMNS` order (one-hot categoricals, 0/1
  booleans, raw numerics; NaN TotalCharges is the blank rule);
- the Telco columns, one tensor [N] (or [N, 1]) each, named as in the CSV header: BYTES in the CSV spellings for
  categoricals and Yes/No columns, an integer for SeniorCitizen (0/1) and tenure, FP32 (or any number) for the
  charges. `customerID` (BYTES) is optional in both forms.
Outputs: `probability` FP32 [N] (P(churn)) and `churn` BOOL [N] (at the version's threshold).
"""
from __future__ import annotations

import collections
import dataclasses
from importlib import metadata as package_metadata
from typing import Sequence

import numpy as np
import pandas as pd

from services.common import features as F
from services.common.errors import InvalidInput, NotFound, shown
from services.inference.model import LoadedModel, ModelHolder
from services.inference.predictor import Predictor
from services.inference.tensors import field_name

FEATURES_INPUT = "features"
ID_INPUT = F.ID_COLUMN
SERVER_NAME = "churn-inference"
INTEGER, NUMBER, TEXT = "integer", "number", "text"
_KINDS = {INTEGER: "biu", NUMBER: "biuf", TEXT: "O"}  # numpy dtype kinds each column accepts
_DECLARED = {INTEGER: "INT64", NUMBER: "FP32", TEXT: "BYTES"}  # what ModelMetadata announces
COLUMN_KINDS = {f.column: (TEXT if f.kind == F.CATEGORICAL or (f.kind == F.BOOLEAN and f.name != "senior_citizen")
                           else INTEGER if f.name in ("senior_citizen", "tenure") else NUMBER) for f in F.FEATURES}
OUTPUTS = {"probability": "FP32", "churn": "BOOL"}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


@dataclasses.dataclass(frozen=True)
class Inference:
    model: LoadedModel
    outputs: list[tuple[str, str, np.ndarray]]  # (name, datatype, values)


INPUTS = [TensorSpec(FEATURES_INPUT, "FP32", (-1, F.N_ENCODED)),
          *(TensorSpec(column, _DECLARED[kind], (-1,)) for column, kind in COLUMN_KINDS.items()),
          TensorSpec(ID_INPUT, "BYTES", (-1,))]


def server_version() -> str:
    try:
        return package_metadata.version("churn-suite")
    except package_metadata.PackageNotFoundError:  # run from a checkout that was never pip-installed
        return "unknown"


class OpenInference:
    def __init__(self, predictor: Predictor, holder: ModelHolder, model_name: str):
        self._predictor = predictor
        self._holder = holder
        self._name = model_name

    @property
    def ready(self) -> bool:
        return self._holder.ready

    def _model(self, name: str, version: str) -> LoadedModel:
        """The served model when `name` (and `version`, if given) is what this instance serves: NotFound naming
        what it serves otherwise, NotReady before the first load."""
        if name != self._name:
            raise NotFound(f"model {shown(name)} is not served here: this server serves {self._name!r}")
        model = self._holder.current
        if version and version != model.version:
            raise NotFound(f"model {self._name!r} version {shown(version)} is not served here: this instance "
                           f"serves version {model.version!r}")
        return model

    def model_ready(self, name: str, version: str) -> bool:
        if name == self._name and not self._holder.ready:
            return False
        self._model(name, version)
        return True

    def metadata(self, name: str, version: str) -> ModelMetadata:
        model = self._model(name, version)
        outputs = [TensorSpec(output, datatype, (-1,)) for output, datatype in OUTPUTS.items()]
        return ModelMetadata(self._name, [model.version], model.flavor, list(INPUTS), outputs)

    def infer(self, name: str, version: str, inputs: dict[str, np.ndarray], requested: Sequence[str],
              request_id: str) -> Inference:
        self._model(name, version)
        wanted = list(dict.fromkeys(requested)) or list(OUTPUTS)
        unknown = [output for output in wanted if output not in OUTPUTS]
        if unknown:
            raise InvalidInput(field_name(unknown[0], "outputs"), f"unknown output, expected one of {list(OUTPUTS)}")
        if FEATURES_INPUT in inputs:
            raw, where = _from_matrix(inputs), (lambda r: f"{field_name(FEATURES_INPUT)} row {r}")
        else:
            raw, where = _from_columns(inputs), (lambda r: f"row {r}")
        ids = _customer_ids(inputs.get(ID_INPUT), len(raw))
        scored = self._predictor.predict_frame(raw, ids, request_id=request_id, method="ModelInfer",
                                               rows_field="inputs", where=where)
        values = {"probability": scored.probabilities.astype(np.float32), "churn": scored.churn}
        return Inference(scored.model, [(output, OUTPUTS[output], values[output]) for output in wanted])


def _rows(name: str, array: np.ndarray) -> np.ndarray:
    """A per-row input as a 1-D array: shape [N] or [N, 1]."""
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim != 1:
        raise InvalidInput(f"{field_name(name)}.shape", f"must be [N] or [N, 1], got {list(array.shape)}")
    return array


def _text(name: str, values: np.ndarray) -> list[str]:
    out = []
    for r, value in enumerate(values):
        try:
            out.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput(f"{field_name(name)} row {r}", "is not UTF-8 text") from None
    return out


def _check_kind(name: str, array: np.ndarray, kind: str) -> None:
    if array.dtype.kind not in _KINDS[kind]:
        expected = {INTEGER: "an integer datatype (INT64)", NUMBER: "a number datatype (FP32)",
                    TEXT: "BYTES"}[kind]
        raise InvalidInput(f"{field_name(name)}.datatype", f"must be {expected}, got {_datatype(array)}")


def _datatype(array: np.ndarray) -> str:
    return "BYTES" if array.dtype == object else array.dtype.name.upper().replace("FLOAT", "FP")


def _from_columns(inputs: dict[str, np.ndarray]) -> pd.DataFrame:
    if not inputs:
        raise InvalidInput("inputs", f"none given: send {FEATURES_INPUT!r} or the Telco columns")
    unknown = [name for name in inputs if name not in COLUMN_KINDS and name != ID_INPUT]
    if unknown:
        raise InvalidInput(field_name(unknown[0]), f"unknown input: send {FEATURES_INPUT!r} or the Telco columns "
                                                   f"({', '.join(COLUMN_KINDS)}), and optionally {ID_INPUT!r}")
    missing = [column for column in COLUMN_KINDS if column not in inputs]
    if missing:
        raise InvalidInput(field_name(missing[0]), f"is required with the column inputs (missing: "
                                                   f"{', '.join(missing)})")
    per_row = {column: _rows(column, inputs[column]) for column in COLUMN_KINDS}
    rows = collections.Counter(len(values) for values in per_row.values()).most_common(1)[0][0]
    columns: dict[str, object] = {}
    for column, kind in COLUMN_KINDS.items():
        values = per_row[column]
        if len(values) != rows:
            raise InvalidInput(f"{field_name(column)}.shape", f"has {len(values)} rows, the other inputs {rows}")
        _check_kind(column, values, kind)
        columns[column] = (_text(column, values) if kind == TEXT else
                           values.astype(np.int64) if kind == INTEGER and values.dtype.kind in "bu" else
                           _decimal(values) if values.dtype.kind == "f" else values)
    if not rows:
        raise InvalidInput(field_name(next(iter(COLUMN_KINDS))), "at least one row is required")
    return pd.DataFrame(columns)


def _from_matrix(inputs: dict[str, np.ndarray]) -> pd.DataFrame:
    others = [name for name in inputs if name not in (FEATURES_INPUT, ID_INPUT)]
    if others:
        raise InvalidInput(field_name(others[0]), f"not accepted with {FEATURES_INPUT!r}: send either the encoded "
                                                  "matrix or the Telco columns")
    matrix = inputs[FEATURES_INPUT]
    if matrix.ndim != 2 or matrix.shape[1] != F.N_ENCODED:
        raise InvalidInput(f"{field_name(FEATURES_INPUT)}.shape",
                           f"must be [N, {F.N_ENCODED}] (features.ENCODED_COLUMNS order), got {list(matrix.shape)}")
    if matrix.dtype.kind != "f":
        raise InvalidInput(f"{field_name(FEATURES_INPUT)}.datatype", f"must be FP32, got {_datatype(matrix)}")
    if not len(matrix):
        raise InvalidInput(field_name(FEATURES_INPUT), "at least one row is required")
    frame = F.decode_matrix(matrix, lambda r: f"{field_name(FEATURES_INPUT)} row {r}")
    for f in F.FEATURES:
        if f.kind == F.NUMERIC:
            frame[f.column] = _decimal(matrix[:, F.ENCODED_COLUMNS.index(f.name)])
    return frame


def _decimal(values: np.ndarray) -> np.ndarray:
    """Floats as float64, a narrower float as the decimal the caller wrote (FP32 73.6 is logged as 73.6, not
    73.5999984741211): its shortest round-trip text read back. The model still sees the same float32."""
    if values.dtype.itemsize >= 8:
        return values.astype(np.float64)
    return values.astype(str).astype(np.float64)


def _customer_ids(array: np.ndarray | None, rows: int) -> list[str]:
    if array is None:
        return [""] * rows
    values = _rows(ID_INPUT, array)
    _check_kind(ID_INPUT, values, TEXT)
    if len(values) != rows:
        raise InvalidInput(f"{field_name(ID_INPUT)}.shape", f"has {len(values)} rows, the other inputs {rows}")
    return _text(ID_INPUT, values)
