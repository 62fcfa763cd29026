"""A scratch cluster of its own for tests that stop, kill or promote nodes, so the session's
cluster (which other test sessions may share) is never disturbed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from router.config import Config, NodeAddress
from router.tools.config_write import with_port_offset
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.failover_ops import agreed_primary


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


@contextlib.contextmanager
def migrated_scratch(test_config: Config, offset: int, name: str) -> Iterator[Config]:
    """A scratch cluster's config, migrated (no documents): a cluster that only the test's
    own routers reach, so no other router's recovery sweep settles what it leaves in doubt."""
    with scratch_cluster(test_config, offset, name) as (_, config):
        asyncio.run(migrate(config, documents=False))
        yield config


async def arrange_shard(local: LocalCluster, shard: str, primary: str) -> None:
    """`shard` as a test needs it, whatever the tests before it left: `primary` writable and
    every other node a running standby of it (stopped ones, and old primaries writable on an
    older timeline, are rejoined), so each test also passes alone."""
    agreed, said = await agreed_primary(local.runner(), local.shard_nodes(shard))
    for name, row in said.items():
        if name != agreed.name and (row is None or not row[0]):
            await asyncio.to_thread(local.rejoin, name)
    if agreed.name != primary:
        await asyncio.to_thread(local.switchover, shard, primary)
