"""training/: leakage-free labels, LightGBM churn and propensity models, baselines, MLflow registry and champion gate."""

import os

# LightGBM's OpenMP threads spin while waiting by default; on a machine whose cores are
# shared (CI, a busy laptop) that made a 2-thread fit 5x slower than a 1-thread one. Passive
# waiting costs nothing when the cores are free. Must be set before OpenMP initialises.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
