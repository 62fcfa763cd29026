"""Carries decisions out: classify once, route, pick the node, run, answer; transactions,
idempotency keys and the cross-shard fan-out. Asks core/, reads ha/, uses backend/."""
