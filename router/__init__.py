"""The georoute daemon and its tooling, one layer a folder (README, "Architecture"):
server/ (client edge) > engine/ (carries decisions out) > ha/ (live view) > backend/
(connections) | core/ (pure decisions), with node.py on top and tools/ beside it."""

__all__: list[str] = []
