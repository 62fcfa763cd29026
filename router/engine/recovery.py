"""Settles two-phase commits that their coordinator left in doubt (it died, or lost a shard
mid-way): at start-up and every `router.twophase_recovery_interval_seconds`, every prepared
transaction with georoute's name on every primary is committed if its decision row says
commit, rolled back if it says abort, and, with no decision after
`router.twophase_grace_seconds`, recorded as aborted and rolled back. Any router node may do
it for any other (two doing it at once agree: the decision row is the one truth). Decision
rows are deleted once no branch of theirs is prepared anywhere."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from router.backend.pool import Backend, NodeUnavailableError, PoolTimeoutError
from router.core.twophase import (
    GID_SQL_PATTERN,
    Gid,
    Recorded,
    RecoveryAction,
    forgettable,
    parse_gid,
    recovery_action,
)
from router.engine.errors import RecoveryNodeUnavailable
from router.engine.outcome import CONNECTION_ERRORS
from router.engine.twophase import record_abort
from router.ha.topology import NodeState, Topology

__all__ = ["Recovery", "SweepReport"]

log = logging.getLogger("georoute.recovery")
# The longest one question of the sweep waits for its answer: past the 2 s lock wait of an
# abort record behind a decision still being committed, short of holding every other shard's
# settling up behind one whose link stalls.
ASK_SECONDS = 5.0

LIST_PREPARED_SQL = (
    "SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts "
    "WHERE gid LIKE $1 AND database = current_database()"
)
LIST_DECISIONS_SQL = "SELECT gtid, participants FROM georoute_tx_decisions"
READ_DECISIONS_SQL = "SELECT gtid, decision FROM georoute_tx_decisions WHERE gtid = ANY($1)"
FORGET_SQL = "DELETE FROM georoute_tx_decisions WHERE gtid = ANY($1)"
_RECORDED = {"commit": Recorded.COMMIT, "abort": Recorded.ABORT}


@dataclass(slots=True)
class SweepReport:
    committed: list[str] = field(default_factory=list)  # gids
    rolled_back: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    forgotten: int = 0  # decision rows deleted

    @property
    def acted(self) -> bool:
        return bool(self.committed or self.rolled_back or self.forgotten)


class Recovery:
    def __init__(self, topology: Callable[[], Topology], router: str, grace_seconds: float,
                 interval_seconds: float) -> None:
        self._topology = topology  # the current one: a SIGHUP reload replaces it
        self._router = router
        self._grace = grace_seconds
        self._interval = interval_seconds

    async def run(self) -> None:
        """Sweep now, then every interval, for as long as the router runs."""
        while True:
            try:
                report = await self.sweep_once()
            except Exception:  # the sweeper must never die
                log.exception("two-phase recovery sweep failed")
            else:
                if report.acted:
                    log.info("two-phase recovery: committed %s, rolled back %s, forgot %d "
                             "decisions", report.committed or "none",
                             report.rolled_back or "none", report.forgotten)
            await asyncio.sleep(self._interval)

    async def sweep_once(self) -> SweepReport:
        topology = self._topology()
        report = SweepReport()
        primaries = {name: shard.primary for name, shard in topology.shards.items()}
        # Decision rows first, prepared transactions after: see core/twophase.forgettable.
        decided: dict[str, dict[str, list[str]]] = {}  # shard -> gtid -> its participants
        for shard, node in primaries.items():
            rows = await self._ask(node, LIST_DECISIONS_SQL)
            if rows is not None:
                decided[shard] = {r[0]: list(r[1]) for r in rows}
        found: dict[str, list[tuple[Gid, float]]] = {}  # participant shard -> its branches
        for shard, node in primaries.items():
            rows = await self._ask(node, LIST_PREPARED_SQL, GID_SQL_PATTERN)
            if rows is None:
                continue
            found[shard] = []
            for gid_text, age in rows:
                gid = parse_gid(gid_text)
                if gid is not None:
                    found[shard].append((gid, float(age)))
        await self._settle(primaries, found, report)
        in_doubt = {gid.gtid for branches in found.values() for gid, _ in branches}
        for shard, gtids in decided.items():
            forget = forgettable(gtids, in_doubt, found, primaries)
            if forget and await self._ask(primaries[shard], FORGET_SQL, sorted(forget)) is not None:
                report.forgotten += len(forget)
        return report

    async def _settle(self, primaries: dict[str, NodeState],
                      found: dict[str, list[tuple[Gid, float]]], report: SweepReport) -> None:
        by_coordinator: dict[str, set[str]] = defaultdict(set)
        for branches in found.values():
            for gid, _ in branches:
                by_coordinator[gid.coordinator].add(gid.gtid)
        recorded: dict[str, Recorded] = {}
        for coordinator, gtids in by_coordinator.items():
            node = primaries.get(coordinator)
            rows = None if node is None else await self._ask(node, READ_DECISIONS_SQL,
                                                             sorted(gtids))
            for gtid in gtids:
                if rows is None:
                    recorded[gtid] = Recorded.UNREADABLE
                else:
                    decisions = {r[0]: r[1] for r in rows}
                    recorded[gtid] = _RECORDED.get(decisions.get(gtid, ""), Recorded.NOTHING)
        for shard, branches in found.items():
            for gid, age in branches:
                action = recovery_action(recorded[gid.gtid], age, self._grace)
                if action is RecoveryAction.RECORD_ABORT:
                    recorded[gid.gtid] = await self._record_abort(primaries[gid.coordinator],
                                                                  gid)
                    action = recovery_action(recorded[gid.gtid], age, self._grace)
                await self._carry_out(primaries[shard], gid, action, report)

    async def _record_abort(self, node: NodeState, gid: Gid) -> Recorded:
        try:
            backend = await self._borrow(node)
        except RecoveryNodeUnavailable:
            return Recorded.UNREADABLE
        try:
            async with asyncio.timeout(ASK_SECONDS):  # bounded, as every question of the sweep
                recorded = await record_abort(backend, gid.gtid, [gid.participant],
                                              self._router)
        except asyncpg.LockNotAvailableError:  # its coordinator is committing it right now
            node.pool.release(backend)
            return Recorded.UNREADABLE
        except asyncpg.PostgresError as exc:
            node.pool.release(backend)
            log.warning("cannot record an abort for %s on %s: %s", gid, node.name, exc)
            return Recorded.UNREADABLE
        except CONNECTION_ERRORS as exc:  # lost, or stalled past ASK_SECONDS: next sweep
            node.pool.release(backend, broken=True)
            log.warning("cannot record an abort for %s on %s: %s", gid, node.name, exc)
            return Recorded.UNREADABLE
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        if recorded is Recorded.ABORT:
            log.warning("two-phase transaction %s had no decision after %g s: recorded as "
                        "aborted", gid.gtid, self._grace)
        return recorded

    async def _carry_out(self, node: NodeState, gid: Gid, action: RecoveryAction,
                         report: SweepReport) -> None:
        if action is RecoveryAction.COMMIT_PREPARED:
            sql, done = f"COMMIT PREPARED '{gid}'", report.committed
        elif action is RecoveryAction.ROLLBACK_PREPARED:
            sql, done = f"ROLLBACK PREPARED '{gid}'", report.rolled_back
        else:
            report.waiting.append(str(gid))
            return
        try:
            backend = await self._borrow(node)
        except RecoveryNodeUnavailable:
            report.waiting.append(str(gid))
            return
        try:
            # Bounded (found by an audit): a link that stalls here held the whole sweep, and
            # every other shard's decided branches stayed prepared, holding their locks.
            async with asyncio.timeout(ASK_SECONDS):
                await backend.conn.execute(sql)
        except asyncpg.UndefinedObjectError:  # settled meanwhile (its coordinator, a peer)
            node.pool.release(backend)
            return
        except asyncpg.PostgresError as exc:  # e.g. busy: another session is settling it
            node.pool.release(backend)
            log.warning("%s on %s: %s", sql, node.name, exc)
            report.waiting.append(str(gid))
            return
        except CONNECTION_ERRORS as exc:  # lost, or stalled past ASK_SECONDS: next sweep
            node.pool.release(backend, broken=True)
            log.warning("%s on %s: %s", sql, node.name, exc)
            report.waiting.append(str(gid))
            return
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        done.append(str(gid))

    async def _borrow(self, node: NodeState) -> Backend:
        if not node.available:
            raise RecoveryNodeUnavailable(node.name)
        try:
            return await node.pool.acquire()
        except (NodeUnavailableError, PoolTimeoutError) as exc:
            raise RecoveryNodeUnavailable(node.name) from exc

    async def _ask(self, node: NodeState, sql: str, *args: object) -> list[asyncpg.Record] | None:
        """Rows of `sql` on `node`; None when it cannot answer (down, busy, not migrated)."""
        try:
            backend = await self._borrow(node)
        except RecoveryNodeUnavailable:
            return None
        try:
            # Bounded: one shard whose link stalls must not hold the sweep up for the others
            # (asyncio's TimeoutError is an OSError, one of CONNECTION_ERRORS).
            async with asyncio.timeout(ASK_SECONDS):
                rows: list[asyncpg.Record] = await backend.conn.fetch(sql, *args)
        except asyncpg.UndefinedTableError:
            node.pool.release(backend)  # not migrated yet: nothing of ours can be there
            return None
        except asyncpg.PostgresError as exc:
            node.pool.release(backend)
            log.warning("two-phase recovery on %s: %s", node.name, exc)
            return None
        except CONNECTION_ERRORS as exc:
            node.pool.release(backend, broken=True)
            log.warning("two-phase recovery on %s: %s", node.name, exc)
            return None
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        return rows
