"""Synchronous replication turned back on after a managed failover, once a standby streams.

A shard with `synchronous = true` acknowledges a write only once a standby has it. Right after
a promotion the new primary may have no standby streaming, so the promoter turns synchronous
replication off on it (router/ha/promoter.py): otherwise every write would wait. Until now only
`georoute cluster rejoin` turned it on again, and in between acknowledged writes could sit on
one node only, even after another standby had been re-pointed and streamed. Here every router
node in managed mode looks, every `CHECK_SECONDS`, at each synchronous shard's primary: when
its `synchronous_standby_names` is empty and a standby streams from it, it sets it to `'*'`
again (what the local cluster and rejoin set) and reloads. Several router nodes doing so at
once set the same value; a primary that an operator set to some other value is left alone.

Turning it on means what `synchronous = true` always meant: should that standby then die,
the shard's writes wait until one streams again (README, "High availability")."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from router.backend.tls import connect_asyncpg
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, NodeAddress
from router.ha.topology import Topology

__all__ = ["CHECK_SECONDS", "STATE_SQL", "Synchrony", "should_turn_on"]

log = logging.getLogger("georoute.synchrony")

CHECK_SECONDS = 1.0
STATE_SQL = ("SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), "
             "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')")
_ON = "*"


def should_turn_on(in_recovery: bool, standby_names: str, streaming: int) -> bool:
    """Whether a synchronous shard's primary should replicate synchronously again: it is the
    writable primary, nothing is set (the promoter's off; an operator's own value is theirs),
    and at least one standby streams (with none, every write would wait)."""
    return not in_recovery and not standby_names.strip() and streaming > 0


@dataclass(slots=True)
class Synchrony:
    """The task (`run`) that turns synchronous replication back on; `turned_on` counts."""

    topology: Callable[[], Topology]
    config: Callable[[], Config]
    clock: Clock = SYSTEM_CLOCK
    turned_on: dict[str, int] = field(default_factory=dict)  # shard -> times
    _conns: dict[str, asyncpg.Connection] = field(default_factory=dict)  # node -> connection

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.check()
                except Exception:  # the keeper must never stop keeping
                    log.exception("the synchronous replication check failed")
                await self.clock.sleep(CHECK_SECONDS)
        finally:
            for conn in self._conns.values():
                conn.terminate()
            self._conns.clear()

    async def check(self) -> None:
        """One look at every synchronous shard's primary, at once."""
        config, topology = self.config(), self.topology()
        shards = [s for s in topology.shards.values()
                  if s.name in config.shards and config.shards[s.name].synchronous]
        await asyncio.gather(*(self._keep(config, s.name, s.primary.name, s.primary.address)
                               for s in shards))

    async def _keep(self, config: Config, shard: str, node: str, address: NodeAddress) -> None:
        conn = self._conns.get(node)
        try:
            if conn is None or conn.is_closed():
                conn = self._conns[node] = await connect_asyncpg(
                    config.database, address, {"application_name": "georoute-synchrony"})
            timeout = config.database.connect_timeout_seconds
            row = await conn.fetchrow(STATE_SQL, timeout=timeout)
            assert row is not None
            if not should_turn_on(bool(row[0]), str(row[1]), int(row[2])):
                return
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{_ON}'",
                               timeout=timeout)
            await conn.execute("SELECT pg_reload_conf()", timeout=timeout)
        except Exception as exc:  # unreachable or busy: looked at again next time
            stale = self._conns.pop(node, None)
            if stale is not None:
                stale.terminate()
            log.debug("synchrony: %s (%s) not checked: %s: %s", node, shard,
                      type(exc).__name__, exc)
            return
        self.turned_on[shard] = self.turned_on.get(shard, 0) + 1
        log.warning("shard %s replicates synchronously again on %s: %d standby(s) stream "
                    "from it", shard, node, int(row[2]))
