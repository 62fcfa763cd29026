"""Commits a transaction's branches: one that wrote on one shard commits as any transaction
does; one that wrote on several commits in two phases (router/core/twophase.py has the names,
the state table and the recovery rules; README, "Transactions over several shards", the why).

Phase one, at once on every shard that wrote: each *participant* runs PREPARE TRANSACTION,
and the *coordinator* (the first shard that wrote) inserts the decision row `(gtid,
'commit')` inside its own branch. Then the coordinator's branch commits: that COMMIT is the
decision. Phase two: COMMIT PREPARED on each participant, retried for a while on fresh
connections, and otherwise left to the recovery sweeper (router/engine/recovery.py), which
obeys the decision row. A refusal anywhere in phase one rolls every branch back; so does a
decision that could not be written (an abort recorded first by a recovering router). The
client is told COMMIT, the error that rolled it back, or, only when the coordinator's COMMIT
was sent and its shard can no longer be asked, that the outcome is unknown. Every wait on a
shard is bounded (phase one by half the grace period, the decision and phase two by
phase_two_seconds): a stalled link delays the answer, it never withholds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.backend.pool import Backend, NodeUnavailableError, PoolTimeoutError
from router.core.twophase import Recorded, TxEvent, TxState, advance, format_gid
from router.engine.branches import Branch
from router.engine.errors import (
    COMMIT_ANSWER_SECONDS,
    CommitOutcomeUnknown,
    OutcomeUnknown,
    PhaseOneTooSlow,
    TwoPhaseAborted,
)
from router.engine.outcome import CONNECTION_ERRORS, bounded_transaction
from router.errors import ConfigError
from router.ha.topology import NodeState

__all__ = [
    "FAULT_ENV",
    "Coordinator",
    "FaultPoint",
    "fault_point_from_env",
    "record_abort",
]

log = logging.getLogger("georoute.twophase")

RECORD_COMMIT_SQL = (
    "INSERT INTO georoute_tx_decisions (gtid, decision, participants, router) "
    "VALUES ($1, 'commit', $2, $3)"
)
RECORD_ABORT_SQL = (
    "INSERT INTO georoute_tx_decisions (gtid, decision, participants, router) "
    "VALUES ($1, 'abort', $2, $3) ON CONFLICT (gtid) DO NOTHING"
)
READ_DECISION_SQL = "SELECT decision FROM georoute_tx_decisions WHERE gtid = $1"
# How long a router waits on a coordinator's uncommitted decision row before it gives up for
# now (that coordinator is alive and deciding: its outcome is read on the next try).
DECISION_LOCK_TIMEOUT = "2s"
PHASE_TWO_RETRY_SECONDS = 5.0  # then the recovery sweeper finishes what is left

# Test-only fault points (README, "Testing two-phase commit"): the router process exits at
# once, as if killed, at the named point of every two-phase commit.
FAULT_ENV = "GEOROUTE_TEST_FAULT_POINT"
FAULT_EXIT_CODE = 75


class FaultPoint(enum.Enum):
    AFTER_PREPARE = "after_prepare"  # every participant prepared; nothing decided
    AFTER_DECISION = "after_decision"  # the decision committed; no COMMIT PREPARED sent


def fault_point_from_env(environ: Mapping[str, str]) -> FaultPoint | None:
    """The fault point named in `environ`, read once at start-up; ConfigError for a name that
    is not one (a typo must not silently test nothing)."""
    name = environ.get(FAULT_ENV, "")
    if not name:
        return None
    try:
        return FaultPoint(name)
    except ValueError:
        known = ", ".join(p.value for p in FaultPoint)
        raise ConfigError(FAULT_ENV, f"{name!r} is not a fault point ({known})") from None


@dataclass(frozen=True, slots=True)
class CommitResult:
    committed: tuple[str, ...]  # shards whose writes are committed and visible now
    deferred: tuple[str, ...] = ()  # committed by decision; COMMIT PREPARED left to recovery
    gtid: str | None = None  # set for a two-phase commit


Acquire = Callable[[NodeState], Awaitable[Backend]]


async def _execute(backend: Backend, sql: str) -> None:
    await backend.conn.execute(sql)


def _release(branch: Branch, *, broken: bool = False) -> None:
    if not branch.done:
        branch.done = True
        branch.node.pool.release(branch.backend, broken=broken)


async def _rollback(branch: Branch) -> None:
    """ROLLBACK a branch that is still open; its connection goes back to the pool (closed if
    the ROLLBACK fails: it cannot be trusted)."""
    if branch.done:
        return
    try:
        await _execute(branch.backend, "ROLLBACK")
    except BaseException:
        _release(branch, broken=True)
        raise
    _release(branch)


async def record_abort(backend: Backend, gtid: str, participants: Sequence[str],
                       router: str) -> Recorded:
    """Record an abort for `gtid` unless a decision is already there; return what is recorded.
    Waits at most DECISION_LOCK_TIMEOUT on a coordinator's decision that is being committed
    (asyncpg.LockNotAvailableError: that coordinator is alive; ask again later)."""
    async with bounded_transaction(backend):
        await backend.conn.execute(f"SET LOCAL lock_timeout = '{DECISION_LOCK_TIMEOUT}'")
        await backend.conn.execute(RECORD_ABORT_SQL, gtid, list(participants), router)
        decision = await backend.conn.fetchval(READ_DECISION_SQL, gtid)
    return Recorded.COMMIT if decision == "commit" else Recorded.ABORT


class Coordinator:
    """Commits branches; one per router node (`router` names it in the decision rows)."""

    def __init__(self, acquire: Acquire, router: str, grace_seconds: float,
                 fault: FaultPoint | None = None,
                 phase_two_seconds: float = PHASE_TWO_RETRY_SECONDS) -> None:
        self._acquire = acquire
        self._router = router
        # Phase one must end well within the grace period recovery gives a prepared branch
        # (README): a decision written later could follow an abort recorded and forgotten.
        self._phase_one_limit = grace_seconds / 2
        # The readers' COMMITs under way (they change nothing, and are not waited for).
        self._readers: set[asyncio.Task[None]] = set()
        self._fault = fault
        self._phase_two_seconds = phase_two_seconds

    async def commit(self, branches: Sequence[Branch], *,
                     serializable: bool = False) -> CommitResult:
        """Commit every branch (each still open) and release their connections. In a
        `serializable` transaction the branches that only read commit first, and a COMMIT
        one of them fails (PostgreSQL may refuse one, 40001, when what it read cannot be
        serialized) rolls the whole transaction back: what it read was not serializable, and
        its client must hear so. Otherwise a reader's COMMIT changes nothing, whatever its
        fate, and it goes with or after the writers'."""
        writers = [b for b in branches if b.wrote]
        readers = [b for b in branches if not b.wrote]
        if serializable and readers:
            await self._commit_readers_first(readers, writers)
            readers = []
        if len(writers) <= 1:
            return await self._one_phase(writers, readers)
        return await self._two_phase(writers, readers)

    async def rollback(self, branches: Sequence[Branch]) -> None:
        """Roll back every open branch (a failed one included); never raises."""
        for result in await asyncio.gather(*(_rollback(b) for b in branches),
                                           return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result

    # ---- one shard wrote (or none): as any transaction --------------------------------------

    async def _one_phase(self, writers: list[Branch], readers: list[Branch]) -> CommitResult:
        for writer in writers:
            try:
                # Awaited COMMIT_ANSWER_SECONDS at most, as the two-phase decision: a stalled
                # link is taken as lost (asyncio's TimeoutError is one of CONNECTION_ERRORS).
                async with asyncio.timeout(COMMIT_ANSWER_SECONDS):
                    await _execute(writer.backend, "COMMIT")
            except CONNECTION_ERRORS as exc:
                _release(writer, broken=True)
                await self.rollback(readers)
                # Whether a COMMIT applied is unknown: never safe to retry blindly.
                raise CommitOutcomeUnknown(writer.shard, writer.node.name, exc) from exc
            except BaseException:
                _release(writer, broken=True)
                await self.rollback(readers)
                raise
            _release(writer)
        self._commit_readers_aside(readers)
        return CommitResult(tuple(b.shard for b in writers))

    async def _commit_readers_first(self, readers: Sequence[Branch],
                                    writers: Sequence[Branch]) -> None:
        """The readers' COMMITs, at once, before any writer's, each awaited
        COMMIT_ANSWER_SECONDS at most; on any failure the writers roll back (nothing of theirs
        was committed or prepared) and it is raised."""

        async def commit(branch: Branch) -> None:
            async with asyncio.timeout(COMMIT_ANSWER_SECONDS):
                await _execute(branch.backend, "COMMIT")

        results = await asyncio.gather(*(commit(b) for b in readers), return_exceptions=True)
        for branch, result in zip(readers, results, strict=True):
            _release(branch, broken=isinstance(result, BaseException))
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.rollback(writers)
            raise failed

    def _commit_readers_aside(self, readers: Sequence[Branch]) -> None:
        """The readers' COMMITs, not waited for: they change nothing, and one whose link
        stalls must not hold the answer up (each gives its connection back when done)."""
        if readers:
            task = asyncio.ensure_future(self._commit_readers(readers))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

    async def _commit_readers(self, readers: Sequence[Branch]) -> None:
        """Branches that wrote nothing: their COMMIT changes nothing, whatever its fate."""

        async def commit(branch: Branch) -> None:
            try:
                await _execute(branch.backend, "COMMIT")
            except Exception as exc:
                log.debug("read-only branch on %s: COMMIT failed: %s", branch.node.name, exc)
                _release(branch, broken=True)
                return
            _release(branch)

        await asyncio.gather(*(commit(b) for b in readers))

    # ---- several shards wrote: two phases ---------------------------------------------------

    async def _two_phase(self, writers: list[Branch], readers: list[Branch]) -> CommitResult:
        gtid = uuid.uuid4().hex
        coordinator, participants = writers[0], writers[1:]
        names = [p.shard for p in participants]
        gids = {p.shard: format_gid(gtid, coordinator.shard, p.shard) for p in participants}
        state = advance(TxState.OPEN, TxEvent.COMMIT_REQUESTED)
        loop = asyncio.get_running_loop()
        started = loop.time()

        # Phase one: prepare every participant, and write the decision in the coordinator's
        # branch, all at once. The readers are done with.
        record = coordinator.backend.run(RECORD_COMMIT_SQL, [gtid, names, self._router])
        prepares = [_execute(p.backend, f"PREPARE TRANSACTION '{gids[p.shard]}'")
                    for p in participants]
        self._commit_readers_aside(readers)
        results = await self._phase_one([record, *prepares])
        failures: list[tuple[Branch, BaseException]] = [
            (b, r) for b, r in zip(writers, results, strict=True) if r is not None]
        if not failures and loop.time() - started >= self._phase_one_limit:
            slow = PhaseOneTooSlow(f"phase one took {loop.time() - started:.1f} s, over half of "
                                "router.twophase_grace_seconds")
            failures = [(coordinator, slow)]
        if failures:
            state = advance(state, TxEvent.PREPARE_FAILED)
            branch, cause = failures[0]
            await self._abort(coordinator, participants, gids, failures)
            advance(state, TxEvent.ROLLED_BACK)
            what = "writing the decision" if branch is coordinator else "PREPARE TRANSACTION"
            raise TwoPhaseAborted(branch.shard, cause, what) from cause
        state = advance(state, TxEvent.ALL_PREPARED)
        self._maybe_fail(FaultPoint.AFTER_PREPARE)

        # The decision: the coordinator's branch commits, decision row and all. Its answer
        # is awaited for phase_two_seconds at most: a link that stalls after the COMMIT left
        # (or before) is taken as lost, and the decision is read back on a fresh connection
        # (asyncio's TimeoutError is an OSError, one of CONNECTION_ERRORS).
        try:
            async with asyncio.timeout(self._phase_two_seconds):
                await _execute(coordinator.backend, "COMMIT")
        except CONNECTION_ERRORS as exc:
            _release(coordinator, broken=True)
            recorded = await self._read_back(coordinator, gtid, names)
            if recorded is Recorded.UNREADABLE:
                advance(state, TxEvent.DECISION_UNREADABLE)
                for participant in participants:
                    _release(participant)  # prepared: it no longer needs its session
                raise OutcomeUnknown(gtid, coordinator.shard, [b.shard for b in writers],
                                     exc) from exc
            if recorded is Recorded.ABORT:
                state = advance(state, TxEvent.DECISION_REFUSED)
                await self._roll_back_prepared(participants, gids)
                advance(state, TxEvent.ROLLED_BACK)
                raise TwoPhaseAborted(coordinator.shard, exc, "COMMIT (the decision)") from exc
        except asyncpg.PostgresError as exc:  # refused: a deferred constraint, serialization
            _release(coordinator)  # its transaction is over, the connection is fine
            state = advance(state, TxEvent.DECISION_REFUSED)
            await self._roll_back_prepared(participants, gids)
            advance(state, TxEvent.ROLLED_BACK)
            raise TwoPhaseAborted(coordinator.shard, exc, "COMMIT (the decision)") from exc
        except BaseException:
            # Cancelled, or our own bug, with the COMMIT perhaps applied: the participants
            # stay prepared, and the recovery sweeper settles them by the decision row.
            _release(coordinator, broken=True)
            for participant in participants:
                _release(participant)
            raise
        else:
            _release(coordinator)
        state = advance(state, TxEvent.DECISION_COMMITTED)
        self._maybe_fail(FaultPoint.AFTER_DECISION)

        # Phase two: the outcome is commit whatever happens now.
        done = await asyncio.gather(*(self._commit_prepared(p, gids[p.shard])
                                      for p in participants))
        advance(state, TxEvent.PHASE_TWO_DONE)
        committed = [coordinator.shard] + [p.shard for p, ok in zip(participants, done,
                                                                     strict=True) if ok]
        deferred = [p.shard for p, ok in zip(participants, done, strict=True) if not ok]
        if deferred:
            log.warning("transaction %s committed; COMMIT PREPARED on %s left to recovery",
                        gtid, ", ".join(deferred))
        return CommitResult(tuple(committed), tuple(deferred), gtid)

    async def _phase_one(self, steps: Sequence[Awaitable[Any]]) -> list[BaseException | None]:
        """Run phase one's steps (the decision row, the PREPAREs) at once; each step's
        failure, or None. A step with no answer within the phase-one limit (a stalled link) is
        given up on as PhaseOneTooSlow: waited for longer, the client would hang with it, and
        a decision written later could follow an abort recovery presumed."""
        tasks = [asyncio.ensure_future(step) for step in steps]
        try:
            _, late = await asyncio.wait(tasks, timeout=self._phase_one_limit)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        limit = (f"no answer within {self._phase_one_limit:g} s, half of "
                 "router.twophase_grace_seconds")
        return [PhaseOneTooSlow(limit) if task in late else task.exception() for task in tasks]

    def _maybe_fail(self, point: FaultPoint) -> None:
        if self._fault is point:
            log.error("test fault point %s: exiting now", point.value)
            os._exit(FAULT_EXIT_CODE)

    async def _abort(self, coordinator: Branch, participants: Sequence[Branch],
                     gids: Mapping[str, str],
                     failures: Sequence[tuple[Branch, BaseException]]) -> None:
        """Phase one failed: the coordinator's branch rolls back first (no commit can be
        decided after that), then every participant that did prepare, or may have."""
        failed = {id(b): exc for b, exc in failures}
        cause = failed.get(id(coordinator))
        if cause is not None and not isinstance(cause, asyncpg.PostgresError):
            # Lost, or given up on (PhaseOneTooSlow: its link may be stalled, and a ROLLBACK
            # would wait behind the cancel of its decision INSERT): its server rolls it back,
            # and COMMIT is never sent on it.
            _release(coordinator, broken=True)
        with contextlib.suppress(Exception):
            await _rollback(coordinator)  # a failed statement leaves it open: roll it back
        prepared: list[Branch] = []
        for participant in participants:
            exc = failed.get(id(participant))
            if exc is None:
                prepared.append(participant)
            elif isinstance(exc, asyncpg.PostgresError):
                # A failed PREPARE is a ROLLBACK; one more ROLLBACK makes sure of it.
                with contextlib.suppress(Exception):
                    await _rollback(participant)
            else:  # lost: it may have prepared; roll back on a fresh connection if we can
                _release(participant, broken=True)
                prepared.append(participant)
        await self._roll_back_prepared(prepared, gids)

    async def _roll_back_prepared(self, participants: Sequence[Branch],
                                  gids: Mapping[str, str]) -> None:
        """ROLLBACK PREPARED each (on its own connection, or a fresh one). One that cannot be
        reached is left to recovery, which rolls it back: its decision row is absent."""

        async def one(branch: Branch) -> None:
            sql = f"ROLLBACK PREPARED '{gids[branch.shard]}'"
            try:
                # Bounded as phase two's tries: a stalled link is left to recovery too.
                async with asyncio.timeout(self._phase_two_seconds):
                    await self._finish(branch, sql)
            except Exception as exc:
                log.warning("ROLLBACK PREPARED on %s failed (%s); recovery will roll it back",
                            branch.node.name, exc)

        await asyncio.gather(*(one(b) for b in participants))

    async def _commit_prepared(self, branch: Branch, gid: str) -> bool:
        """COMMIT PREPARED, retried on fresh connections for a while; False when it is left to
        the recovery sweeper (the decision is durable: it will commit it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._phase_two_seconds
        pause = 0.05
        while True:
            try:
                # Each try within what is left: a stalled link must not hold the client's
                # answer (the decision is made; the sweeper finishes what is left).
                async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                    await self._finish(branch, f"COMMIT PREPARED '{gid}'")
                return True
            except asyncpg.UndefinedObjectError:
                return True  # a recovering router committed it already
            except (asyncpg.PostgresError, NodeUnavailableError, PoolTimeoutError,
                    *CONNECTION_ERRORS) as exc:
                if loop.time() + pause > deadline:
                    log.warning("COMMIT PREPARED %s on %s: %s", gid, branch.node.name, exc)
                    return False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _finish(self, branch: Branch, sql: str) -> None:
        """`sql` (COMMIT/ROLLBACK PREPARED) on the branch's own connection while it holds
        it, else on a fresh one from its node's pool."""
        if not branch.done:
            try:
                await _execute(branch.backend, sql)
            except asyncpg.PostgresError:
                _release(branch)
                raise
            except BaseException:
                _release(branch, broken=True)
                raise
            _release(branch)
            return
        backend = await self._acquire(branch.node)
        try:
            await _execute(backend, sql)
        except asyncpg.PostgresError:
            branch.node.pool.release(backend)
            raise
        except BaseException:
            branch.node.pool.release(backend, broken=True)
            raise
        branch.node.pool.release(backend)

    async def _read_back(self, coordinator: Branch, gtid: str,
                         participants: Sequence[str]) -> Recorded:
        """After the coordinator's COMMIT was lost: what did it decide? An abort is recorded
        unless the commit is there (it waits for a COMMIT still in progress)."""
        deadline = asyncio.get_running_loop().time() + self._phase_two_seconds
        while True:
            try:
                backend = await self._acquire(coordinator.node)
            except (NodeUnavailableError, PoolTimeoutError) as exc:
                log.warning("cannot read the decision of %s on %s: %s", gtid,
                            coordinator.node.name, exc)
                return Recorded.UNREADABLE
            try:
                # Within what is left of the wait: an idle pooled connection's link may be
                # stalled too (then the outcome is unknown, as when the shard cannot be asked).
                async with asyncio.timeout_at(deadline):
                    recorded = await record_abort(backend, gtid, participants, self._router)
            except asyncpg.LockNotAvailableError:
                coordinator.node.pool.release(backend)
                if asyncio.get_running_loop().time() > deadline:
                    return Recorded.UNREADABLE
                continue
            except asyncpg.PostgresError as exc:
                coordinator.node.pool.release(backend)
                log.warning("cannot read the decision of %s: %s", gtid, exc)
                return Recorded.UNREADABLE
            except BaseException as exc:
                coordinator.node.pool.release(backend, broken=True)
                if isinstance(exc, Exception):
                    return Recorded.UNREADABLE
                raise
            coordinator.node.pool.release(backend)
            return recorded
