"""The monitor against the session's real cluster: every node says what it is
(`pg_is_in_recovery()`), primaries and replicas alike, and a primary's position is its current
WAL position, which a write moves on. (A promotion is tests/integration/test_external_failover.py,
on a scratch cluster.)"""

from __future__ import annotations

from router.config import Config
from router.core.health import NodeHealth
from router.ha.monitor import LagMonitor
from router.ha.topology import Topology
from router.tools.db.connect import connect_node
from router.types import Role

LSN_SQL = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8"


async def test_every_node_says_what_it_is_and_the_primary_its_current_position(
    migrated: Config,
) -> None:
    topology = Topology.from_config(migrated)
    monitor = LagMonitor(migrated, topology)
    eu = await connect_node(migrated, migrated.shards["europe"].primary)
    try:
        for shard in topology.shards.values():
            await monitor.measure(shard)
            assert shard.primary.role is Role.PRIMARY
            assert shard.primary.in_recovery is False
            assert shard.primary.health is NodeHealth.UP
            for replica in shard.replicas:
                assert replica.role is Role.REPLICA and replica.in_recovery is True
                assert replica.health is NodeHealth.UP and replica.lag_bytes is not None
        europe = topology.shards["europe"]
        await eu.execute("CREATE TEMP TABLE monitor_probe AS SELECT 1 AS v")  # some WAL
        written = await eu.fetchval(LSN_SQL)
        await monitor.measure(europe)
        assert europe.primary.replay_lsn is not None and europe.primary.replay_lsn >= written
        assert europe.last_primary_lsn == europe.primary.replay_lsn
    finally:
        await eu.close()
        await monitor.stop()
        for shard in topology.shards.values():
            await shard.lsn.close()

