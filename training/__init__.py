"""training/: leakage-free labels, LightGBM churn and propensity models, baselines, MLflow registry and champion gate."""
