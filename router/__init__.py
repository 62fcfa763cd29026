"""The georoute daemon and its tooling: configuration, pure routing decisions, the server
that carries them out, and the local cluster, migrations and seed commands."""

__all__: list[str] = []
