"""The BentoML anchor: a BentoML 1.4 service around the same registered xgboost booster, taking pre-encoded rows
(the feature module's float32 columns), as a team that picked BentoML would serve it. Runs in its own virtualenv
(var/bench-bentoml: BentoML's pins clash with the suite's OpenTelemetry), started by bench/anchors.py as

    BENCH_MODEL_JSON=<version>/artifacts/model.json bentoml serve bento_service:ChurnBento --port P

POST /predict {"rows": [[45 floats], …]} → [P(churn), …]."""
from __future__ import annotations

import os

import bentoml
import numpy as np
import xgboost


@bentoml.service(workers=1)
class ChurnBento:
    def __init__(self) -> None:
        self.booster = xgboost.Booster()
        self.booster.load_model(os.environ["BENCH_MODEL_JSON"])
        self.booster.set_param({"nthread": 1})

    @bentoml.api
    def predict(self, rows: list[list[float]]) -> list[float]:
        return self.booster.inplace_predict(np.asarray(rows, dtype=np.float32)).tolist()
