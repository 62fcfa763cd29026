"""A scratch cluster of its own for tests that stop, kill or promote nodes, so the session's
cluster (which other test sessions may share) is never disturbed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from router.config import Config, NodeAddress
from router.tools.config_write import with_port_offset
from router.tools.localcluster import LocalCluster


def with_third_node(config: Config, shard: str) -> Config:
    """`config` with one more replica for `shard`, on the port after every node's."""
    shards = dict(config.shards)
    grown = shards[shard]
    free = max(a.port for s in shards.values() for a in (s.primary, *s.replicas)) + 1
    shards[shard] = replace(grown, replicas=(
        *grown.replicas, NodeAddress("127.0.0.1", free, grown.primary.database)))
    return replace(config, shards=shards)


@contextlib.contextmanager
def scratch_cluster(test_config: Config, offset: int,
                    name: str) -> Iterator[tuple[LocalCluster, Config]]:
    """The test cluster's layout `offset` ports further, in a state dir of its own (`name`),
    up for the block and purged after it."""
    config = with_port_offset(test_config, offset, str(Path(test_config.cluster.state_dir) / name))
    local = LocalCluster(config)
    try:
        local.up()  # inside: a start that fails half-way (a port taken meanwhile) stops
        yield local, config  # what it had started, e.g. the document store, rather than leak it
    finally:
        local.down(purge=True)
