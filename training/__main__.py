"""`python -m training [--if-missing] [--force] [--staging-flavor xgboost] …` — see training.pipeline.
`python -m training --data prepared.csv --register-as staging --flavor xgboost --lineage lineage.json
--result-file result.json` registers one candidate version (what monitoring's Retrain runs)."""
from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--register-as", default=None, metavar="ALIAS",
                        help="train ONE new version of --flavor and point ALIAS at it (a Retrain candidate)")
    parser.add_argument("--flavor", choices=FLAVORS, default="xgboost", help="the candidate's flavour")
    parser.add_argument("--lineage", type=pathlib.Path, default=None, help="JSON: datasets, parent_version")
    parser.add_argument("--result-file", type=pathlib.Path, default=None, help="writes {version, metrics} here")
    args = parser.parse_args(argv)
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    from training import pipeline

    if args.register_as:
        lineage = json.loads(args.lineage.read_text()) if args.lineage else {}
        pipeline.run_candidate(args.data or pipeline.DEFAULT_DATA, args.flavor, args.register_as, lineage,
                               args.result_file, args.model_name)
        return 0
    pipeline.run(args.data or pipeline.DEFAULT_DATA, args.model_name, args.production_flavor, args.staging_flavor,
                 force=args.force, if_missing=args.if_missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
