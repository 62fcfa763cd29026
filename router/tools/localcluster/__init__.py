"""`georoute cluster`: a local cluster of PostgreSQL shards (primary + streaming replicas each)
and a SecantusDB document store, started from router.toml for development and tests."""

from router.tools.localcluster.manager import DOCSTORE, LocalCluster
from router.tools.localcluster.status import NodeState, NodeStatus, Role

__all__ = ["DOCSTORE", "LocalCluster", "NodeState", "NodeStatus", "Role"]
