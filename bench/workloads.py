"""The workloads (point read, single-row write, 80/20 mix, and the cross-shard catalogue page
and count by region) over the real schema, the ids they draw from, and the closed-loop
measurement: N workers, bounded in time and count."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

__all__ = [
    "CATALOGUE",
    "COUNT_BY_REGION",
    "MAIN_WORKLOADS",
    "POINT_READ",
    "SCATTER_WORKLOADS",
    "Measurement",
    "Op",
    "RunsOps",
    "Sample",
    "Workload",
    "load_sample",
    "measure",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """Ids of rows on the benchmarked shard, read once from its primary."""

    user_ids: list[Any]
    enrollment_ids: list[Any]
    progress_ids: list[Any]


async def load_sample(port: int, database: str, user: str, limit: int = 5000) -> Sample:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=user, database=database)
    try:
        async def ids(sql: str) -> list[Any]:
            return [r[0] for r in await conn.fetch(sql, limit)]

        return Sample(
            await ids("SELECT user_id FROM users ORDER BY user_id LIMIT $1"),
            await ids("SELECT enrollment_id FROM enrollments ORDER BY enrollment_id LIMIT $1"),
            await ids("SELECT progress_id FROM lesson_progress ORDER BY progress_id LIMIT $1"),
        )
    finally:
        await conn.close()


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    sql: str
    read: bool
    args: Callable[[random.Random, Sample], tuple[Any, ...]]
    # For cross-shard ops, the direct baseline's own merge of the shards' rows (georoute
    # merges in the router).
    merge: Callable[[list[list[Any]]], list[Any]] = lambda parts: []


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    title: str
    ops: tuple[tuple[Op, float], ...]  # (op, weight)
    scatter: bool = False  # reads every shard (the direct baseline merges by hand)

    def pick(self, rng: random.Random) -> Op:
        if len(self.ops) == 1:
            return self.ops[0][0]
        x = rng.random() * sum(w for _, w in self.ops)
        for op, weight in self.ops:
            x -= weight
            if x < 0:
                return op
        return self.ops[-1][0]


class RunsOps(Protocol):
    """What `measure` needs of a target (bench/targets.py's Target is one): run one op."""

    async def run(self, op: Op, args: Sequence[Any]) -> None: ...


USER_BY_ID = Op(
    "user_by_id",
    "SELECT user_id, email, full_name, city, country FROM users WHERE user_id = $1",
    True,
    lambda rng, s: (rng.choice(s.user_ids),),
)
ENROLLMENT_BY_ID = Op(
    "enrollment_by_id",
    "SELECT enrollment_id, user_id, course_id, status, progress_pct "
    "FROM enrollments WHERE enrollment_id = $1",
    True,
    lambda rng, s: (rng.choice(s.enrollment_ids),),
)
# A learner's progress tick; the table's triggers recompute the enrollment's progress.
PROGRESS_UPDATE = Op(
    "progress_update",
    "UPDATE lesson_progress SET seconds_spent = seconds_spent + 1 WHERE progress_id = $1",
    False,
    lambda rng, s: (rng.choice(s.progress_ids),),
)
def _page(parts: list[list[Any]]) -> list[Any]:
    merged = heapq.merge(*parts, key=lambda row: (row["price_cents"], row["course_id"]))
    return list(itertools.islice(merged, 20))


def _counts(parts: list[list[Any]]) -> list[Any]:
    totals: dict[str, int] = {}
    for part in parts:
        for region, count in part:
            totals[region] = totals.get(region, 0) + count
    return list(totals.items())


# A catalogue page: published courses of every region under a price, cheapest first.
CATALOGUE_PAGE = Op(
    "catalogue_page",
    "SELECT course_id, title, price_cents FROM courses WHERE status = 'published' "
    "AND price_cents <= $1 ORDER BY price_cents, course_id LIMIT 20",
    True,
    lambda rng, s: (rng.choice((2_000, 5_000, 10_000, 1_000_000)),),
    merge=_page,
)
REGION_COUNTS = Op(
    "region_counts",
    "SELECT home_region, count(*) FROM users GROUP BY 1",
    True,
    lambda rng, s: (),
    merge=_counts,
)

POINT_READ = Workload("point_read", "point read by id (users)", ((USER_BY_ID, 1.0),))
WRITE = Workload("write", "single-row write (lesson_progress update)", ((PROGRESS_UPDATE, 1.0),))
MIXED = Workload(
    "mixed",
    "80% reads (users, enrollments by id) / 20% progress updates",
    ((USER_BY_ID, 0.4), (ENROLLMENT_BY_ID, 0.4), (PROGRESS_UPDATE, 0.2)),
)
CATALOGUE = Workload(
    "catalogue", "catalogue page over all shards (published, under a price, 20 by price)",
    ((CATALOGUE_PAGE, 1.0),), scatter=True,
)
COUNT_BY_REGION = Workload(
    "count_by_region", "users counted by home region over all shards (GROUP BY)",
    ((REGION_COUNTS, 1.0),), scatter=True,
)
MAIN_WORKLOADS = (POINT_READ, WRITE, MIXED)
SCATTER_WORKLOADS = (CATALOGUE, COUNT_BY_REGION)


@dataclass
class Measurement:
    ops: int
    errors: int
    seconds: float
    latencies_ns: list[int] = field(repr=False)
    first_error: str | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_ns:
            return 0.0
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index] / 1e6

    def summary(self) -> dict[str, Any]:
        mean = sum(self.latencies_ns) / len(self.latencies_ns) / 1e6 if self.latencies_ns else 0
        return {
            "ops": self.ops,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "ops_per_s": round(self.ops_per_s, 1),
            "mean_ms": round(mean, 3),
            "p50_ms": round(self.percentile_ms(0.50), 3),
            "p99_ms": round(self.percentile_ms(0.99), 3),
            "first_error": self.first_error,
        }


async def measure(target: RunsOps, workload: Workload, sample: Sample, concurrency: int,
                  duration: float, max_ops: int, seed: int = 1) -> Measurement:
    """`concurrency` workers issue ops back to back until `duration` seconds or `max_ops`."""
    loop = asyncio.get_running_loop()
    latencies: list[int] = []
    state = {"left": max_ops, "errors": 0}
    first_error: list[str] = []
    stop_at = loop.time() + duration

    async def worker(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        clock = time.perf_counter_ns
        while state["left"] > 0 and loop.time() < stop_at:
            state["left"] -= 1
            op = workload.pick(rng)
            args = op.args(rng, sample)
            started = clock()
            try:
                await target.run(op, args)
            except Exception as exc:  # counted and reported, never hidden
                state["errors"] += 1
                if not first_error:
                    first_error.append(f"{op.name}: {type(exc).__name__}: {exc}"[:300])
                continue
            latencies.append(clock() - started)

    started = time.perf_counter()
    async with asyncio.timeout(duration + 60):
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    seconds = time.perf_counter() - started
    return Measurement(len(latencies), state["errors"], seconds, latencies,
                       first_error[0] if first_error else None)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
