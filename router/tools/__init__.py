"""Operator commands (`georoute ...`): the local cluster, migrations, seed, health, demo.
Nothing in the request path imports this package."""
