"""`georoute cluster`: a local cluster of PostgreSQL shards (primary + streaming replicas each)
and a SecantusDB document store, started from router.toml for development and tests."""

from router.tools.localcluster.manager import DOCSTORE, LocalCluster
from router.tools.localcluster.status import NodeStatus, ProcessState

__all__ = ["DOCSTORE", "LocalCluster", "NodeStatus", "ProcessState"]
