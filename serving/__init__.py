"""serving/: the policy layer, the Vowpal Wabbit bandit, the decision log and the BentoML service."""
