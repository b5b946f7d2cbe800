"""experiments/: marketplace simulator, policy comparison, offline policy evaluation, A/B analysis, reports."""
