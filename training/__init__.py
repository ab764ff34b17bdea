"""Training: Telco data -> xgboost + scikit-learn models -> MLflow (metrics, signature, artifacts) -> registered
versions of one model with `production` / `staging` aliases. Run as `python -m training` (see `--help`); the
artifact layout every service reads is documented in `services.common.model_registry`."""
