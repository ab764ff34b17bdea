"""The pyfunc every registered version is: raw Telco columns in, P(churn) out, so `mlflow models serve` and
`mlflow.pyfunc.load_model` need nothing but the version. Kept free of training-only imports: a fresh process loads
it from the version's `code/` folder."""
from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd


class ChurnModel(mlflow.pyfunc.PythonModel):
    """Encodes with the shared feature module, then calls the native model logged beside it (artifacts/)."""

    def load_context(self, context) -> None:
        import pathlib

        from services.common.model_registry import load_native

        root = pathlib.Path(context.artifacts["model_info"]).parent.parent  # <version>/artifacts/model_info.json
        self.model = load_native(root)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from services.common.features import encode_frame

        return np.asarray(self.model.probability(encode_frame(model_input)), dtype=np.float64)


# Models from code (MLflow 3): the version stores this file and runs it at load, instead of a cloudpickle.
mlflow.models.set_model(ChurnModel())
