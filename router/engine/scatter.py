"""Cross-shard reads, the coordinator: run a read's per-shard statement on every shard it
needs, in parallel, and merge the answers (plan: router/core/scatter_rewrite.py; merge: merge.py).

Each shard is read as a one-shard read is: a fresh-enough replica, past the session's
read-your-writes position for that shard, else the primary. The fan-out runs inside the
request's own timeout. The first shard that fails fails the request, with that shard named;
the other parts are abandoned (their tasks cancelled, a pipelined statement's result
dropped), and no partial answer is ever returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import ErrorCode
from protocol.messages import Hints
from router.backend.pgwire import PipelineError, Unsupported
from router.backend.pipeline import is_lock_timeout, is_stale_statement
from router.backend.pool import Backend, NodeUnavailableError
from router.config import Config
from router.core.classify import Analysis
from router.core.health import HealthEvent
from router.core.merge import ShardRows, ValueOrder, column_orders, merge, real_columns
from router.core.reads import AwaitReplay, ReadPlan
from router.core.routing import Scatter
from router.core.scatter_plan import Refusal, ScatterPlan, ScatterRefused
from router.core.scatter_rewrite import plan_scatter
from router.engine.errors import EngineError, ShardFailure
from router.engine.outcome import Outcome, ScatterDone, returned_after
from router.engine.session import Session
from router.ha.topology import NodeState, ShardState, Topology
from router.types import Role

__all__ = ["ScatterRunner", "ScatterStats", "ShardFailure"]

# Collations whose order is the code points' (what the merge compares text by). glibc's
# C.UTF-8 sorts by code point too; the property tests check it against PostgreSQL.
_CODE_POINT_COLLATIONS = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
_DATABASE_SQL = (
    "SELECT datcollate, ARRAY(SELECT oid::int8 FROM pg_type WHERE typtype = 'e') "
    "FROM pg_database WHERE datname = current_database()"
)

# Executor.plan_read: where a read of one shard runs (core/reads.py, for the session and its
# hints); Executor._pick: that plan carried out (None: on the primary), the node and a borrowed
# pooled connection (None: read on the node's pipelined connections); Executor.acquire: a
# pooled connection of a node.
PlanRead = Callable[[Session, ShardState, Hints], ReadPlan[NodeState]]
Pick = Callable[[ShardState, ReadPlan[NodeState] | None, bool],
                Awaitable[tuple[NodeState, Backend | None]]]
Acquire = Callable[[NodeState], Awaitable[Backend]]


@dataclass(slots=True)
class ScatterStats:
    """Counters for the metrics endpoint (router/metrics.py reads them)."""

    requests: int = 0
    fanout: dict[int, int] = field(default_factory=dict)  # shards asked -> requests
    merge_seconds: float = 0.0
    shard_seconds: dict[str, tuple[int, float]] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)  # reason -> count

    def refused(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    def shard_done(self, shard: str, seconds: float) -> None:
        count, total = self.shard_seconds.get(shard, (0, 0.0))
        self.shard_seconds[shard] = (count + 1, total + seconds)


class _Reshaped(EngineError):
    """A part's result has another number of columns than the types kept for it (the part
    is read again: one that reached a client would be our bug)."""

    code = ErrorCode.INTERNAL


class _FastParts:
    """The parts queued on pipelined connections: `done` resolves once each has answered.
    A part that fails in a way a read may simply run again (`failed`) waits for the rest;
    any other failure, or too many rows, fails `done` at once."""

    __slots__ = ("answers", "done", "failed", "rows", "waiting")

    def __init__(self, count: int) -> None:
        self.answers: list[_Answer | None] = [None] * count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.failed: list[tuple[int, NodeState, BaseException]] = []
        self.waiting = 0
        self.rows = 0

    def queued(self) -> None:
        self.waiting += 1

    def _settled(self) -> None:
        self.waiting -= 1
        if self.waiting == 0 and not self.done.done():
            self.done.set_result(None)

    def answer(self, index: int, answer: _Answer, max_rows: int) -> None:
        if len(answer.columns) != len(answer.orders):
            self.fail(index, answer.node, _Reshaped())
            return
        self.answers[index] = answer
        self.rows += len(answer.rows)
        if self.rows > max_rows and not self.done.done():
            self.done.set_exception(_too_large(max_rows))
        self._settled()

    def fail(self, index: int, node: NodeState, exc: BaseException | None) -> None:
        exc = exc or PipelineError("no result")
        if (isinstance(exc, (PipelineError, _Reshaped)) or is_stale_statement(exc)
                or is_lock_timeout(exc)):
            self.failed.append((index, node, exc))
        elif not self.done.done():
            self.done.set_exception(ShardFailure(node.shard, exc))
        self._settled()


def _too_large(max_rows: int) -> ScatterRefused:
    return ScatterRefused(
        Refusal.TOO_LARGE, "the result",
        f"the shards sent more than router.max_scatter_rows ({max_rows}) rows to merge; "
        "narrow the read (a WHERE, a LIMIT) or read each shard")


@dataclass(slots=True)
class _Answer:
    shard: str
    node: NodeState
    columns: list[str]
    rows: list[Any]
    orders: list[ValueOrder]
    real: frozenset[int]  # columns of type real (float4): merge's `real`


class ScatterRunner:
    def __init__(self, config: Config, topology: Topology, plan_read: PlanRead, pick: Pick,
                 acquire: Acquire) -> None:
        self._config = config
        self._topology = topology
        self._plan_read = plan_read
        self._pick = pick
        self._acquire = acquire
        self._max_rows = config.router.max_scatter_rows
        self._databases: dict[str, tuple[bool, frozenset[int]]] = {}  # node -> (C, enums)
        self.stats = ScatterStats()

    def plan(self, sql: str, analysis: Analysis) -> ScatterPlan:
        """The plan, kept with the statement's analysis (a refusal is kept too)."""
        found = analysis.scatter.get("plan")
        if found is None:
            try:
                found = plan_scatter(sql, analysis.confinement, self._config.tables)
            except ScatterRefused as exc:
                found = exc
            analysis.scatter["plan"] = found
        if isinstance(found, ScatterRefused):
            self.stats.refused(found.reason.value)
            raise found
        return found

    def submit(self, session: Session, sql: str, params: Sequence[Any], analysis: Analysis,
               target: Scatter, hints: Hints, done: ScatterDone) -> bool:
        """The read queued with no task and no await: every part on a pipelined connection,
        merged and handed to `done` once the last has answered. False when any part cannot
        go that way (the first run of a statement text, which learns its types; a replica
        to wait for; a pipeline that declines; a refused statement): then `run` takes the
        read, and a part already queued is abandoned (its result dropped)."""
        plan = analysis.scatter.get("plan")
        if plan is None or isinstance(plan, ScatterRefused) or "orders" not in analysis.scatter:
            return False
        fast = _FastParts(len(target.shards))
        for index, name in enumerate(target.shards):
            if not self._submit(fast, index, session, name, plan, params, analysis, hints):
                fast.done.cancel()
                return False

        def finish(result: asyncio.Future[None]) -> None:
            if not result.cancelled():
                self._finish(result, fast, plan, params, target, analysis, done)

        fast.done.add_done_callback(finish)
        self._count(target)
        return True

    def _count(self, target: Scatter, by: int = 1) -> None:
        stats, width = self.stats, len(target.shards)
        stats.requests += by
        stats.fanout[width] = stats.fanout.get(width, 0) + by

    def _finish(self, result: asyncio.Future[None], fast: _FastParts, plan: ScatterPlan,
                params: Sequence[Any], target: Scatter, analysis: Analysis,
                done: ScatterDone) -> None:
        """A queued read's parts have answered (or one failed): merged, or its error, or
        run again the ordinary way (reads are safe to repeat)."""
        exc = result.exception()
        if exc is not None:
            if isinstance(exc, ScatterRefused):
                self.stats.refused(exc.reason.value)
            done(None, exc, False)
            return
        if fast.failed:
            try:
                self._forget_failures(fast, target, plan, analysis)
            except ShardFailure as failure:
                done(None, failure, False)
                return
            index, _, first = fast.failed[0]
            self._count(target, -1)  # counted again by `run`
            done(None, ShardFailure(target.shards[index], first), True)
            return
        answers = [a for a in fast.answers if a is not None]
        try:
            if sum(len(a.rows) for a in answers) > self._max_rows:
                self.stats.refused(Refusal.TOO_LARGE.value)
                raise _too_large(self._max_rows)
            outcome = self._merge(plan, params, answers)
        except Exception as error:  # a refusal, a bad LIMIT: a typed reply
            done(None, error, False)
            return
        done(outcome, None, False)

    async def run(self, session: Session, sql: str, params: Sequence[Any], analysis: Analysis,
                  target: Scatter, hints: Hints) -> Outcome:
        plan = self.plan(sql, analysis)
        self._count(target)
        budget = [self._max_rows]
        # Parts queued at once on pipelined connections, answered by callbacks (no task);
        # the rest (a replica to wait for, types not known yet, a pipeline that declines)
        # run as tasks. Both are awaited together.
        fast = _FastParts(len(target.shards))
        tasks: dict[asyncio.Future[Any], str] = {}
        for index, name in enumerate(target.shards):
            if not self._submit(fast, index, session, name, plan, params, analysis, hints):
                tasks[asyncio.ensure_future(self._one(
                    session, name, plan, params, analysis, hints, budget))] = name
        if not tasks:  # every part on a pipelined connection (the usual case): one future
            try:
                await fast.done
            except ScatterRefused as refusal:
                self.stats.refused(refusal.reason.value)
                raise
            return await self._gathered(fast, list(fast.answers), session, target, plan,
                                        params, analysis, hints, budget)
        if fast.waiting:
            tasks[fast.done] = ""
        try:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:  # cancelled (the request's timeout): so are the shards' reads
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            first = failed[0]
            exc = first.exception()
            assert exc is not None
            if isinstance(exc, ScatterRefused):
                self.stats.refused(exc.reason.value)
                raise exc
            if isinstance(exc, ShardFailure):  # a pipelined part's, named already
                raise exc
            raise ShardFailure(tasks[first], exc) from exc
        answers: list[_Answer | None] = list(fast.answers)
        for task, name in tasks.items():
            if name:
                answers[target.shards.index(name)] = task.result()
        return await self._gathered(fast, answers, session, target, plan, params, analysis,
                                    hints, budget)

    async def _gathered(self, fast: _FastParts, answers: list[_Answer | None],
                        session: Session, target: Scatter, plan: ScatterPlan,
                        params: Sequence[Any], analysis: Analysis, hints: Hints,
                        budget: list[int]) -> Outcome:
        """Every part has answered or failed in a way a read may run again: those run again,
        then the answers are merged."""
        if fast.failed:
            await self._again(fast, answers, session, target, plan, params, analysis, hints,
                              budget)
        found = [a for a in answers if a is not None]
        assert len(found) == len(target.shards)
        if sum(len(a.rows) for a in found) > self._max_rows:  # the parts counted apart
            self.stats.refused(Refusal.TOO_LARGE.value)
            raise _too_large(self._max_rows)
        return self._merge(plan, params, found)

    def _submit(self, fast: _FastParts, index: int, session: Session, name: str,
                plan: ScatterPlan, params: Sequence[Any], analysis: Analysis,
                hints: Hints) -> bool:
        """Queue one shard's part on a pipelined connection with no await, as the fast path
        does a one-shard read; False when it must run as a task instead."""
        orders: list[ValueOrder] | None = analysis.scatter.get("orders")
        if orders is None:
            return False
        real: frozenset[int] = analysis.scatter.get("real", frozenset())
        read = self._plan_read(session, self._topology.shards[name], hints)
        if type(read) is AwaitReplay:
            return False  # the bounded wait for a replica to replay the session's writes
        node = read.node
        if not node.available or node.name not in self._databases:
            return False
        pipeline = node.pool.pipeline
        started = time.perf_counter()

        def answered(rows: list[Any] | None, status: str, server_seconds: float,
                     exc: BaseException | None, wal: int | None) -> None:
            pipeline.finished(plan.sql, server_seconds)
            if exc is None and rows is not None:
                self.stats.shard_done(name, time.perf_counter() - started)
                fast.answer(index, _Answer(name, node, columns or [], rows, orders, real),
                            self._max_rows)
            else:
                fast.fail(index, node, exc)

        columns = pipeline.submit(plan.sql, plan.shard_params(params), answered, False,
                                  hints.timeout_ms)
        if columns is None:
            return False
        fast.queued()
        return True

    async def _again(self, fast: _FastParts, answers: list[_Answer | None], session: Session,
                     target: Scatter, plan: ScatterPlan, params: Sequence[Any],
                     analysis: Analysis, hints: Hints, budget: list[int]) -> None:
        """Parts the pipeline could not finish (a lost connection, a statement to prepare
        again, a result of another shape) run again as tasks: reads are safe to repeat."""
        self._forget_failures(fast, target, plan, analysis)
        budget[0] = self._max_rows - sum(len(a.rows) for a in answers if a is not None)
        again = [index for index, _, _ in fast.failed]
        try:
            found = await asyncio.gather(*(
                self._one(session, target.shards[i], plan, params, analysis, hints, budget)
                for i in again))
        except ScatterRefused:
            raise
        except Exception as exc:
            raise ShardFailure(",".join(target.shards[i] for i in again), exc) from exc
        for index, answer in zip(again, found, strict=True):
            answers[index] = answer

    def _forget_failures(self, fast: _FastParts, target: Scatter, plan: ScatterPlan,
                         analysis: Analysis) -> None:
        """What the pipeline's failed parts say: a lost connection, a statement to prepare
        again, a result whose shape changed (its types are learnt again)."""
        for index, node, exc in fast.failed:
            if isinstance(exc, PipelineError):
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
            elif is_stale_statement(exc):
                node.pool.pipeline.forget(plan.sql)
            elif isinstance(exc, _Reshaped):
                analysis.scatter.pop("orders", None)
            elif not is_lock_timeout(exc):
                raise ShardFailure(target.shards[index], exc) from exc

    def _merge(self, plan: ScatterPlan, params: Sequence[Any],
               answers: list[_Answer]) -> Outcome:
        started = time.perf_counter()
        text_exact = all(self._databases.get(a.node.name, (False,))[0] for a in answers)
        orders = answers[0].orders
        try:
            columns, rows = merge(plan, params,
                                  [ShardRows(a.shard, a.columns, a.rows) for a in answers],
                                  orders, text_exact=text_exact,
                                  real=answers[0].real)
        except ScatterRefused as exc:
            self.stats.refused(exc.reason.value)
            raise
        self.stats.merge_seconds += time.perf_counter() - started
        replica = all(a.node.role is Role.REPLICA for a in answers)
        return Outcome(columns, rows, f"SELECT {len(rows)}",
                       ",".join(a.shard for a in answers), ",".join(a.node.name for a in answers),
                       Role.REPLICA if replica else Role.PRIMARY)

    async def _one(
        self, session: Session, name: str, plan: ScatterPlan, params: Sequence[Any],
        analysis: Analysis, hints: Hints, budget: list[int],
    ) -> _Answer:
        started = time.perf_counter()
        shard = self._topology.shards[name]
        node, backend = await self._pick(shard, self._plan_read(session, shard, hints), True)
        try:
            answer = await self._read(name, node, backend, plan, params, analysis,
                                      hints.timeout_ms)
        except NodeUnavailableError:
            if node is shard.primary:
                raise
            # The replica went away under the read: a read is safe to run again on the primary.
            node, backend = await self._pick(shard, None, True)
            answer = await self._read(name, node, backend, plan, params, analysis,
                                      hints.timeout_ms)
        budget[0] -= len(answer.rows)
        if budget[0] < 0:
            raise _too_large(self._max_rows)
        self.stats.shard_done(name, time.perf_counter() - started)
        return answer

    async def _read(self, name: str, node: NodeState, backend: Backend | None, plan: ScatterPlan,
                    params: Sequence[Any], analysis: Analysis,
                    timeout_ms: int | None) -> _Answer:
        """One shard's part: on the node's pipelined connections once the statement's column
        types are known (they are the same on every shard: one schema), else on a pooled
        connection, which also learns them (and the database's collation and enums)."""
        shard_params = plan.shard_params(params)
        orders: list[ValueOrder] | None = analysis.scatter.get("orders")
        if backend is None and orders is not None and node.name in self._databases:
            try:
                columns, rows, _ = await node.pool.pipeline.run(plan.sql, shard_params,
                                                                 timeout_ms=timeout_ms)
            except Unsupported:
                pass  # declined (nothing was sent): a pooled connection takes it
            except PipelineError as exc:
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                raise NodeUnavailableError(f"{node.name}: connection lost: {exc}",
                                           sent=True) from exc
            else:
                if len(columns) == len(orders):
                    real = analysis.scatter.get("real", frozenset())
                    return _Answer(name, node, columns, rows, orders, real)
                # Its result changed shape (a migration): learn the types again, below.
        if backend is None:
            backend = await self._acquire(node)
        with returned_after(node, backend):
            if node.name not in self._databases:
                collation, enums = (await backend.run(_DATABASE_SQL, ()))[1][0]
                self._databases[node.name] = (collation in _CODE_POINT_COLLATIONS,
                                              frozenset(enums))
            columns, rows, _ = await backend.run(plan.sql, shard_params)
            attributes = await backend.attributes(plan.sql)
        orders = column_orders(attributes, self._databases[node.name][1])
        real = real_columns(attributes)
        analysis.scatter["real"] = real  # before "orders", which says both are known
        analysis.scatter["orders"] = orders
        return _Answer(name, node, columns, rows, orders, real)
