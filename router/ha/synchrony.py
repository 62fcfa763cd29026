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
the shard's writes wait until one streams again (README, "High availability").

It also does the promoter's part when the promoter could not: a shard whose primary changed
while this node watched (a failover it followed) and whose new primary still has `'*'` and
no standby streaming (its promoter stopped between `pg_promote` and turning synchronous
replication off: its router died, or its attempt ran out of time) gets it turned off, as the
promoter would have; otherwise every write would wait for a standby that may never stream
(found by an audit). A primary that loses its standby without a failover is left as it is."""

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

__all__ = ["CHECK_SECONDS", "STATE_SQL", "Synchrony", "should_turn_off", "should_turn_on"]

log = logging.getLogger("georoute.synchrony")

CHECK_SECONDS = 1.0
# A standby that can acknowledge: streaming and reporting where it has flushed (a
# pg_basebackup's WAL stream reports no flush position, and PostgreSQL does not wait for it).
STATE_SQL = ("SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), "
             "(SELECT count(*) FROM pg_stat_replication "
             "WHERE state = 'streaming' AND flush_lsn IS NOT NULL)")
_ON = "*"


def should_turn_off(in_recovery: bool, standby_names: str, streaming: int,
                    new_primary: bool) -> bool:
    """Whether a synchronous shard's primary should replicate asynchronously for now: it is a
    new primary (a failover this node followed), writable, with our `'*'` still set and no
    standby streaming, as the promoter leaves one right after pg_promote."""
    return new_primary and not in_recovery and standby_names.strip() == _ON and streaming == 0


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
    turned_off: dict[str, int] = field(default_factory=dict)  # shard -> times (new primaries)
    _conns: dict[str, asyncpg.Connection] = field(default_factory=dict)  # node -> connection
    # shard -> the primary first seen when this node started watching, then each new one
    # (until it has been looked at); a failover followed shows as a change of name.
    _primaries: dict[str, str] = field(default_factory=dict)
    _new: set[str] = field(default_factory=set)  # shards whose new primary is not looked at

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
        for shard in shards:
            seen = self._primaries.get(shard.name)
            if seen is not None and seen != shard.primary.name:
                self._new.add(shard.name)
                stale = self._conns.pop(seen, None)  # no longer its primary
                if stale is not None:
                    stale.terminate()
            self._primaries[shard.name] = shard.primary.name
        # A fenced primary (stale: router/core/primary.py) is not this shard's to set up.
        await asyncio.gather(*(self._keep(config, s.name, s.primary.name, s.primary.address)
                               for s in shards if not s.primary.fenced))

    async def _keep(self, config: Config, shard: str, node: str, address: NodeAddress) -> None:
        conn = self._conns.get(node)
        try:
            if conn is None or conn.is_closed():
                conn = self._conns[node] = await connect_asyncpg(
                    config.database, address, {"application_name": "georoute-synchrony"})
            timeout = config.database.connect_timeout_seconds
            row = await conn.fetchrow(STATE_SQL, timeout=timeout)
            assert row is not None
            in_recovery, names, streaming = bool(row[0]), str(row[1]), int(row[2])
            if should_turn_off(in_recovery, names, streaming, shard in self._new):
                await conn.execute("ALTER SYSTEM SET synchronous_standby_names = ''",
                                   timeout=timeout)
                await conn.execute("SELECT pg_reload_conf()", timeout=timeout)
                self._new.discard(shard)
                self.turned_off[shard] = self.turned_off.get(shard, 0) + 1
                log.warning("shard %s's new primary %s had synchronous replication on and no "
                            "standby streaming (its promoter did not finish): asynchronous "
                            "until one streams", shard, node)
                return
            if not in_recovery:
                self._new.discard(shard)  # looked at as the writable primary: nothing to undo
            if not should_turn_on(in_recovery, names, streaming):
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
