"""Cross-shard reads, the coordinator: run a read's per-shard statement on every shard it
needs, in parallel, and merge the answers (plan: router/scatter_plan.py; merge: merge.py).

Each shard is read as a one-shard read is: a fresh-enough replica, past the session's
read-your-writes position for that shard, else the primary. The fan-out runs inside the
request's own timeout. The first shard that fails fails the request, with that shard named;
the others are cancelled, and no partial answer is ever returned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from protocol.messages import Hints
from protocol.messages import Role as WireRole
from router.classify import Analysis
from router.config import Config
from router.health import HealthEvent
from router.lsn import UNKNOWN_LSN
from router.merge import ShardRows, ValueOrder, column_orders, merge
from router.outcome import CONNECTION_ERRORS, Outcome
from router.pgwire import PipelineError, Unsupported
from router.pool import Backend, NodeUnavailableError
from router.routing import Consistency, Role, Scatter
from router.scatter_plan import Refusal, ScatterPlan, ScatterRefused, plan_scatter
from router.session import Session
from router.topology import NodeState, ShardState, Topology

__all__ = ["ScatterRunner", "ScatterStats", "ShardFailure"]

# Collations whose order is the code points' (what the merge compares text by). glibc's
# C.UTF-8 sorts by code point too; the property tests check it against PostgreSQL.
_CODE_POINT_COLLATIONS = frozenset({"C", "POSIX", "C.UTF-8", "C.utf8"})
_DATABASE_SQL = (
    "SELECT datcollate, ARRAY(SELECT oid::int8 FROM pg_type WHERE typtype = 'e') "
    "FROM pg_database WHERE datname = current_database()"
)

# Executor._pick: the node for a read of one shard, and a borrowed pooled connection (None:
# read on the node's pipelined connections); Executor.acquire: a pooled connection of a node.
Pick = Callable[[ShardState, Role, int | None, bool], Awaitable[tuple[NodeState, Backend | None]]]
Acquire = Callable[[NodeState], Awaitable[Backend]]


class ShardFailure(Exception):
    """One shard of a cross-shard read failed: `cause` is what it raised (failures.py maps it
    as it would for a one-shard read, naming the shard)."""

    def __init__(self, shard: str, cause: BaseException) -> None:
        super().__init__(f"shard {shard}: {cause}")
        self.shard = shard
        self.cause = cause


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


@dataclass(slots=True)
class _Answer:
    shard: str
    node: NodeState
    columns: list[str]
    rows: list[Any]
    orders: list[ValueOrder]


class ScatterRunner:
    def __init__(self, config: Config, topology: Topology, pick: Pick, acquire: Acquire) -> None:
        self._config = config
        self._topology = topology
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

    async def run(self, session: Session, sql: str, params: Sequence[Any], analysis: Analysis,
                  target: Scatter, hints: Hints, consistency: Consistency) -> Outcome:  # fmt: skip
        plan = self.plan(sql, analysis)
        self.stats.requests += 1
        self.stats.fanout[len(target.shards)] = self.stats.fanout.get(len(target.shards), 0) + 1
        budget = [self._max_rows]
        tasks = {
            asyncio.ensure_future(
                self._one(session, name, plan, params, analysis, hints, consistency, budget)
            ): name
            for name in target.shards
        }  # fmt: skip
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
            raise ShardFailure(tasks[first], exc) from exc
        answers = [task.result() for task in tasks]  # in the order the shards were named
        return self._merge(plan, params, answers)

    def _merge(self, plan: ScatterPlan, params: Sequence[Any],
               answers: list[_Answer]) -> Outcome:  # fmt: skip
        started = time.perf_counter()
        text_exact = all(self._databases.get(a.node.name, (False,))[0] for a in answers)
        orders = answers[0].orders
        try:
            columns, rows = merge(plan, params,
                                  [ShardRows(a.shard, a.columns, a.rows) for a in answers],
                                  orders, text_exact=text_exact)  # fmt: skip
        except ScatterRefused as exc:
            self.stats.refused(exc.reason.value)
            raise
        self.stats.merge_seconds += time.perf_counter() - started
        replica = all(a.node.role is Role.REPLICA for a in answers)
        return Outcome(columns, rows, f"SELECT {len(rows)}",
                       ",".join(a.shard for a in answers), ",".join(a.node.name for a in answers),
                       WireRole.REPLICA if replica else WireRole.PRIMARY)  # fmt: skip

    async def _one(
        self, session: Session, name: str, plan: ScatterPlan, params: Sequence[Any],
        analysis: Analysis, hints: Hints, consistency: Consistency, budget: list[int],
    ) -> _Answer:
        started = time.perf_counter()
        shard = self._topology.shards[name]
        role = Role.PRIMARY if consistency is Consistency.STRONG else Role.REPLICA
        min_lsn = session.min_lsn(name, hints.ryw) if consistency is Consistency.SESSION else None
        node, backend = await self._pick(shard, role, min_lsn, True)
        try:
            answer = await self._read(name, node, backend, plan, params, analysis)
        except NodeUnavailableError:
            if node.role is not Role.REPLICA:
                raise
            # The replica went away under the read: a read is safe to run again on the primary.
            node, backend = await self._pick(shard, Role.PRIMARY, UNKNOWN_LSN, True)
            answer = await self._read(name, node, backend, plan, params, analysis)
        budget[0] -= len(answer.rows)
        if budget[0] < 0:
            raise ScatterRefused(
                Refusal.TOO_LARGE, "the result",
                f"the shards sent more than router.max_scatter_rows ({self._max_rows}) rows "
                "to merge; narrow the read (a WHERE, a LIMIT) or read each shard")  # fmt: skip
        self.stats.shard_done(name, time.perf_counter() - started)
        return answer

    async def _read(self, name: str, node: NodeState, backend: Backend | None, plan: ScatterPlan,
                    params: Sequence[Any], analysis: Analysis) -> _Answer:  # fmt: skip
        """One shard's part: on the node's pipelined connections once the statement's column
        types are known (they are the same on every shard: one schema), else on a pooled
        connection, which also learns them (and the database's collation and enums)."""
        shard_params = plan.shard_params(params)
        orders: list[ValueOrder] | None = analysis.scatter.get("orders")
        if backend is None and orders is not None and node.name in self._databases:
            try:
                columns, rows, _ = await node.pool.pipeline.run(plan.sql, shard_params)
            except Unsupported:
                pass  # declined (nothing was sent): a pooled connection takes it
            except PipelineError as exc:
                node.record(HealthEvent.CONNECT_FAILED, str(exc))
                raise NodeUnavailableError(f"{node.name}: connection lost: {exc}",
                                           sent=True) from exc  # fmt: skip
            else:
                if len(columns) == len(orders):
                    return _Answer(name, node, columns, rows, orders)
                # Its result changed shape (a migration): learn the types again, below.
        if backend is None:
            backend = await self._acquire(node)
        try:
            if node.name not in self._databases:
                collation, enums = (await backend.run(_DATABASE_SQL, ()))[1][0]
                self._databases[node.name] = (collation in _CODE_POINT_COLLATIONS,
                                              frozenset(enums))  # fmt: skip
            columns, rows, _ = await backend.run(plan.sql, shard_params)
            attributes = await backend.attributes(plan.sql)
        except CONNECTION_ERRORS as exc:
            node.pool.release(backend, broken=True)
            node.record(HealthEvent.CONNECT_FAILED, str(exc))
            raise NodeUnavailableError(f"{node.name}: connection lost: {exc}", sent=True) from exc
        except (asyncpg.PostgresError, asyncpg.exceptions.InterfaceError):
            node.pool.release(backend)  # the statement failed; the connection is fine
            raise
        except BaseException:
            node.pool.release(backend, broken=True)  # e.g. cancelled mid-statement
            raise
        node.pool.release(backend)
        orders = column_orders(attributes, self._databases[node.name][1])
        analysis.scatter["orders"] = orders
        return _Answer(name, node, columns, rows, orders)
