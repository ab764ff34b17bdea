"""The inference service: churn scores from the MLflow alias this instance serves (production or staging)."""
