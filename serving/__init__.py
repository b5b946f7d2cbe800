"""serving/: the BentoML service, its request and response bodies, the scoring adapter and the serve/learner commands."""
