"""features/: data contract, synthetic marketplace, point-in-time features, tiers, segments, tags, online store."""
