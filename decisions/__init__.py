"""decisions/: the policy layer, the choosers (VW bandit, random, rule book, oracle), the reward, the decision log and the learner."""
