"""`python -m training [--if-missing] [--force] [--staging-flavor xgboost] …` — see training.pipeline."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

from services.common.model_registry import FLAVORS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--data", type=pathlib.Path, default=None, help="Telco CSV (default data/telco_churn.csv)")
    parser.add_argument("--model-name", default=None, help="registered model (default env MODEL_NAME or churn-model)")
    parser.add_argument("--production-flavor", choices=FLAVORS, default="xgboost")
    parser.add_argument("--staging-flavor", choices=FLAVORS, default="sklearn")
    parser.add_argument("--force", action="store_true", help="retrain even if a version with the same fingerprint exists")
    parser.add_argument("--if-missing", action="store_true", help="do nothing when the production alias resolves")
    args = parser.parse_args(argv)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from training import pipeline

    pipeline.run(args.data or pipeline.DEFAULT_DATA, args.model_name, args.production_flavor, args.staging_flavor,
                 force=args.force, if_missing=args.if_missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
