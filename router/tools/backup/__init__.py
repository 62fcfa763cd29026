"""`georoute backup` and `georoute restore`: base backups of each shard's primary with its
archived WAL (point-in-time recovery into a separate node), and dumps of the document store."""
