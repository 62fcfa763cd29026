"""A workload that can tell what was lost: writers with unique ids (and idempotency keys) that
read back what they wrote, through the router, while a test injects faults; then every shard
(or the document store) is read directly and each write is judged.

    target = SqlTarget(config)            # the cluster's primaries, read directly at the end
    await target.prepare()
    checker = Checker(target, "georoute://127.0.0.1:16600,127.0.0.1:16601", TOKEN)
    async with checker.running():
        await checker.progress(20)        # 20 writes acknowledged, then the fault
        ...
        await checker.progress(20)        # and 20 more after it
    report = await checker.report()
    report.assert_safe()                  # nothing acknowledged lost, nothing applied twice...

What a writer is told decides what the report expects (PROTOCOL.md section 3): a reply is an
acknowledged write (it must be there); an error marked retryable means nothing applied (it
must not be there); an error that is not retryable and says the connection, the node or the
time ran out (TIMEOUT, NODE_UNAVAILABLE, CONNECTION_LOST, INTERNAL) leaves the outcome
unknown: counted, then resolved by the direct read (for a keyed write, whose retryable
error only says it is safe to send again, whether retryable or not); any other error (a
refusal) applied nothing. RESULT_UNDELIVERABLE is an acknowledged write whose rows were lost.

Ids are georoute ids of the write's home shard (so the router routes them by key); the table
has no unique constraint on them, so a write applied twice shows as two rows."""

# A per-call `timeout=` (sent to the router as timeout_ms, as client.Client takes it).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import enum
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from pymongo import AsyncMongoClient

import client
from protocol import ErrorCode
from router.config import Config, TableConfig
from router.tools.db.connect import connect_node
from tests.support.ids import new_id

__all__ = [
    "CHECKER_TABLE",
    "Attempt",
    "Checker",
    "DocTarget",
    "Outcome",
    "Report",
    "SqlTarget",
    "judge",
    "outcome_of",
    "with_checker_table",
]

CHECKER_TABLE = TableConfig(name="chk_writes", region_column="region", id_columns=("write_id",))
CHECKER_DDL = """
CREATE TABLE IF NOT EXISTS chk_writes (
    row_id   bigserial PRIMARY KEY,
    write_id uuid NOT NULL,
    region   text NOT NULL,
    writer   text NOT NULL,
    seq      int NOT NULL
);
CREATE INDEX IF NOT EXISTS chk_writes_write_id ON chk_writes (write_id);
CREATE INDEX IF NOT EXISTS chk_writes_writer ON chk_writes (writer text_pattern_ops)"""

_UNKNOWN_CODES = frozenset({ErrorCode.TIMEOUT, ErrorCode.NODE_UNAVAILABLE,
                            ErrorCode.CONNECTION_LOST, ErrorCode.INTERNAL})
# The errors a writer or reader may meet while faults happen; anything else is a bug in the
# test or the client and propagates.
_EXPECTED = (client.GeorouteError, TimeoutError, OSError)


def with_checker_table(config: Config) -> Config:
    """`config` with the checker's table among the sharded ones (for the routers it runs)."""
    return replace(config, tables={**config.tables, CHECKER_TABLE.name: CHECKER_TABLE})


class Outcome(enum.Enum):
    ACKNOWLEDGED = "acknowledged"
    NOT_APPLIED = "not_applied"
    UNKNOWN = "unknown"


def outcome_of(exc: BaseException, keyed: bool = False) -> Outcome:
    """What a write's error told the writer about it (see the module's docstring). Under an
    idempotency key "retryable" means "safe to send again", not "nothing applied": a keyed
    write lost at its COMMIT is retryable (its retry gets the stored reply), so a keyed
    write's retryable lost connection or timeout leaves its outcome unknown too."""
    if isinstance(exc, client.ResultUndeliverableError):
        return Outcome.ACKNOWLEDGED  # it applied; only its rows were lost
    if isinstance(exc, client.GeorouteError):
        if exc.code in _UNKNOWN_CODES and (keyed or not exc.retryable):
            return Outcome.UNKNOWN
        return Outcome.NOT_APPLIED  # nothing was sent, or it was refused
    return Outcome.UNKNOWN  # a TimeoutError or OSError around the call: it may have gone


def _name(exc: BaseException) -> str:
    if isinstance(exc, client.GeorouteError):
        return f"{exc.name}{'' if exc.retryable else '!'}"  # ! marks "not retryable"
    return type(exc).__name__


# ---- what the writers write to ------------------------------------------------------------


class Target(Protocol):
    name: str

    @property
    def homes(self) -> Sequence[str]:
        """Where writes go (shards), for unavailability per home."""
        ...

    def new_id(self, home: str) -> str: ...

    async def write(self, db: client.Client, home: str, write_id: str, writer: str, seq: int,
                    key: str | None, timeout: float) -> None: ...

    async def read(self, db: client.Client, home: str, write_id: str,
                   timeout: float) -> int: ...

    async def found(self, writers: Sequence[str]) -> dict[str, list[str]]:
        """write id -> the home of each copy found (directly, not through the router)."""
        ...


class SqlTarget:
    """Rows in chk_writes on the shards' primaries (read directly at the end). After a
    failover, `primaries` names a shard's new primary (by node name), to be read instead."""

    name = "sql"

    def __init__(self, config: Config, homes: Sequence[str] = ()) -> None:
        self.config = config
        self.homes = tuple(homes or config.shards)
        self.primaries: dict[str, str] = {}

    async def prepare(self) -> None:
        """The checker's table on every shard (directly on each primary)."""
        for shard in self.config.shards.values():
            conn = await connect_node(self.config, shard.primary)
            try:
                await conn.execute(CHECKER_DDL)
            finally:
                await conn.close()

    def new_id(self, home: str) -> str:
        return str(new_id(self.config.shards[home].number))

    async def write(self, db: client.Client, home: str, write_id: str, writer: str, seq: int,
                    key: str | None, timeout: float) -> None:
        await db.execute(
            "INSERT INTO chk_writes (write_id, region, writer, seq) VALUES ($1, $2, $3, $4)",
            uuid.UUID(write_id), home, writer, seq, idempotency_key=key, timeout=timeout)

    async def read(self, db: client.Client, home: str, write_id: str, timeout: float) -> int:
        n = await db.fetchval("SELECT count(*) FROM chk_writes WHERE write_id = $1",
                              uuid.UUID(write_id), timeout=timeout)
        return int(n)

    async def found(self, writers: Sequence[str]) -> dict[str, list[str]]:
        copies: dict[str, list[str]] = collections.defaultdict(list)
        addresses = {node: address for _, node, address in self.config.all_nodes()}
        for name, shard in self.config.shards.items():
            node = self.primaries.get(name)
            conn = await connect_node(self.config, addresses[node] if node else shard.primary)
            try:
                rows = await conn.fetch(
                    "SELECT write_id::text, count(*) FROM chk_writes WHERE writer = ANY($1) "
                    "GROUP BY write_id", list(writers))
            finally:
                await conn.close()
            for write_id, count in rows:
                copies[write_id].extend([name] * count)
        return dict(copies)


class DocTarget:
    """Documents in user_preferences (through the router; read directly from the store)."""

    name = "documents"
    homes = ("documents",)
    COLLECTION = "user_preferences"

    def __init__(self, config: Config) -> None:
        self.config = config

    def new_id(self, home: str) -> str:
        return str(uuid.uuid4())

    async def write(self, db: client.Client, home: str, write_id: str, writer: str, seq: int,
                    key: str | None, timeout: float) -> None:
        # Document writes take no idempotency key (the router refuses one): none is sent.
        doc = {"_id": write_id, "user_id": write_id, "region": "europe", "language": "en",
               "timezone": "UTC", "theme": "light",
               "notifications": {"email": True, "push": False, "weekly_digest": False},
               "interests": [writer, str(seq)], "updated_at": dt.datetime.now(dt.UTC)}
        await db.docs(self.COLLECTION).insert_one(doc, timeout=timeout)

    async def read(self, db: client.Client, home: str, write_id: str, timeout: float) -> int:
        found = await db.docs(self.COLLECTION).find_one({"_id": write_id}, timeout=timeout)
        return 0 if found is None else 1

    async def found(self, writers: Sequence[str]) -> dict[str, list[str]]:
        store: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            self.config.document_store.uri, serverSelectionTimeoutMS=10_000)
        try:
            coll = store[self.config.document_store.database][self.COLLECTION]
            copies: dict[str, list[str]] = collections.defaultdict(list)
            async for doc in coll.find({"interests.0": {"$in": list(writers)}}, {"_id": 1}):
                copies[str(doc["_id"])].append("documents")
            return dict(copies)
        finally:
            await store.close()


# ---- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    target: str
    writers: int
    seconds: float
    attempted: int = 0
    acknowledged: int = 0
    not_applied: int = 0
    unknown: int = 0
    unknown_applied: int = 0
    unknown_not_applied: int = 0
    lost: int = 0  # acknowledged, not found: must be 0
    duplicated: int = 0  # found more than once: must be 0
    misplaced: int = 0  # found on another shard than its id names: must be 0
    false_failures: int = 0  # told "not applied", found applied: must be 0
    phantoms: int = 0  # found, never written by this run: must be 0
    reads: int = 0
    read_failures: int = 0
    ryw_violations: int = 0  # an acknowledged write its own session then did not see
    longest_unavailability: float = 0.0  # seconds, the longest gap between acknowledged writes
    worst_home: str = ""  # ... to this home
    errors: dict[str, int] = field(default_factory=dict)  # by error name (! = not retryable)
    examples: list[str] = field(default_factory=list)  # the first few problems, for messages

    def problems(self) -> list[str]:
        found = [f"{n} {what}" for n, what in (
            (self.lost, "acknowledged writes missing"),
            (self.duplicated, "writes applied more than once"),
            (self.misplaced, "writes on another shard than their own"),
            (self.false_failures, "writes reported not applied that applied"),
            (self.phantoms, "rows nobody wrote"),
            (self.ryw_violations, "read-your-writes violations"),
        ) if n]
        if self.unknown != self.unknown_applied + self.unknown_not_applied:
            found.append("unknown outcomes left unresolved")
        return found

    def assert_safe(self) -> None:
        problems = self.problems()
        assert not problems, f"{'; '.join(problems)} ({self.summary()}; e.g. {self.examples})"

    def summary(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{self.target}: {self.attempted} writes in {self.seconds:.1f}s by "
                f"{self.writers} writers: {self.acknowledged} acknowledged, "
                f"{self.not_applied} not applied, {self.unknown} unknown "
                f"({self.unknown_applied} applied, {self.unknown_not_applied} not); "
                f"lost {self.lost}, duplicated {self.duplicated}, misplaced {self.misplaced}, "
                f"false failures {self.false_failures}, phantoms {self.phantoms}; "
                f"{self.reads} reads ({self.read_failures} failed), ryw violations "
                f"{self.ryw_violations}; longest unavailability "
                f"{self.longest_unavailability:.2f}s ({self.worst_home}); errors: {errors}")


@dataclass
class Attempt:
    write_id: str
    home: str
    outcome: Outcome
    error: str | None = None
    message: str = ""  # the error's own words, for the report's examples


def judge(report: Report, attempts: Sequence[Attempt], found: dict[str, list[str]]) -> Report:
    """Fill in `report`'s write figures: each attempt against the copies found of it."""
    examples = report.examples
    attempted = set()
    for a in attempts:
        attempted.add(a.write_id)
        report.attempted += 1
        copies = found.get(a.write_id, [])
        if len(copies) > 1:
            report.duplicated += 1
            examples.append(f"{a.write_id} applied {len(copies)} times")
        if any(home != a.home for home in copies):
            report.misplaced += 1
            examples.append(f"{a.write_id} of {a.home} found on {copies}")
        if a.outcome is Outcome.ACKNOWLEDGED:
            report.acknowledged += 1
            if not copies:
                report.lost += 1
                examples.append(f"acknowledged {a.write_id} ({a.home}) missing")
        elif a.outcome is Outcome.UNKNOWN:
            report.unknown += 1
            if copies:
                report.unknown_applied += 1
            else:
                report.unknown_not_applied += 1
        else:
            report.not_applied += 1
            if copies:
                report.false_failures += 1
                examples.append(f"{a.write_id} told {a.error} (not applied), applied: {a.message}")
    report.phantoms = len(set(found) - attempted)
    if report.phantoms:
        examples.append(f"rows nobody wrote: {sorted(set(found) - attempted)[:3]}")
    del examples[5:]
    return report


# ---- the workload -------------------------------------------------------------------------


class Checker:
    """`writers` sessions (each its own `client.Client`, so its own read-your-writes map),
    writer i writing to home i modulo the homes (so a shard that hangs holds up only its own
    writers, and each shard's unavailability is its own), one write at a time, every `keyed_every`-th
    with an idempotency key, and reading each acknowledged write back at once (session
    consistency). Each call is bounded by `op_timeout`."""

    def __init__(self, target: Target, dsn: str, token: str, *, writers: int = 4,
                 op_timeout: float = 2.0, keyed_every: int = 2, pool_size: int = 2,
                 backoff: float = 0.02) -> None:
        self.target = target
        self.dsn = dsn
        self.token = token
        self.writers = writers
        self.op_timeout = op_timeout
        self.keyed_every = keyed_every
        self.pool_size = pool_size
        self.backoff = backoff
        self.run_id = uuid.uuid4().hex[:10]
        self._attempts: list[Attempt] = []
        self._acked_at: dict[str, list[float]] = {h: [] for h in target.homes}
        self._reads = 0
        self._read_failures = 0
        self._ryw: list[str] = []
        self._errors: collections.Counter[str] = collections.Counter()
        self._internal: list[str] = []  # INTERNAL errors' messages (their log references)
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._started = 0.0
        self._ended = 0.0
        self._writer_names = [f"chk-{self.run_id}-{i}" for i in range(writers)]

    @property
    def acknowledged(self) -> int:
        return sum(1 for a in self._attempts if a.outcome is Outcome.ACKNOWLEDGED)

    @property
    def attempted(self) -> int:
        return len(self._attempts)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Checker]:
        """The writers run for the block; on leaving it, each finishes its call (bounded by
        op_timeout) and stops."""
        sessions = [await client.connect(self.dsn, token=self.token, pool_size=self.pool_size,
                                         client_name=name, connect_timeout=self.op_timeout)
                    for name in self._writer_names]
        self._started = time.monotonic()
        tasks = [asyncio.create_task(self._writer(i, db)) for i, db in enumerate(sessions)]
        try:
            yield self
        finally:
            self._stop.set()
            self._ended = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.gather(*tasks), 4 * self.op_timeout + 10)
            finally:
                for task in tasks:
                    task.cancel()
                for db in sessions:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(db.close(), 5)

    async def progress(self, writes: int, within: float = 30.0, what: str = "") -> None:
        """Wait until `writes` more writes are acknowledged (fails after `within` seconds)."""
        goal = self.acknowledged + writes
        deadline = time.monotonic() + within
        while self.acknowledged < goal:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                recent = list(dict.fromkeys(f"{a.home} {a.error}: {a.message}"
                                            for a in self._attempts[-50:] if a.error))[-3:]
                raise AssertionError(f"only {self.acknowledged}/{goal} writes acknowledged "
                                     f"within {within}s{' ' + what if what else ''}: "
                                     f"errors {dict(self._errors)}; the last: {recent}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def attempts_since(self, mark: int) -> list[Attempt]:
        """The writes attempted after the `mark`-th (an `attempted` value), in order."""
        return self._attempts[mark:]

    def longest_gap_of(self, homes: Sequence[str]) -> float:
        """The longest time without an acknowledged write to any of `homes` (so far)."""
        times = sorted(t for h in homes for t in self._acked_at[h])
        marks = [self._started, *times, self._ended or time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(marks))

    def errors_since(self, mark: int) -> list[str]:
        """The errors of the writes attempted after the `mark`-th (an `attempted` value)."""
        return [a.error for a in self._attempts[mark:] if a.error is not None]

    async def _writer(self, index: int, db: client.Client) -> None:
        homes = self.target.homes
        writer = self._writer_names[index]
        for seq in itertools.count():
            if self._stop.is_set():
                return
            home = homes[index % len(homes)]
            write_id = self.target.new_id(home)
            key = f"{writer}-{seq}" if self.keyed_every and seq % self.keyed_every == 0 else None
            try:
                await self.target.write(db, home, write_id, writer, seq, key, self.op_timeout)
            except _EXPECTED as exc:
                outcome = outcome_of(exc, keyed=key is not None)
                name = _name(exc)
                self._errors[name] += 1
                error: str | None = name
                message = str(exc)[:300]
                if name.startswith("INTERNAL") and len(self._internal) < 5:
                    self._internal.append(message)
            else:
                outcome, error, message = Outcome.ACKNOWLEDGED, None, ""
            self._attempts.append(Attempt(write_id, home, outcome, error, message))
            if outcome is Outcome.ACKNOWLEDGED:
                self._acked_at[home].append(time.monotonic())
                self._changed.set()
                await self._read_back(db, home, write_id)
            else:
                # A client backs off after a failure, as client.Client's own retries do;
                # without it a writer would spin on a shard that fails fast.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.backoff)

    async def _read_back(self, db: client.Client, home: str, write_id: str) -> None:
        try:
            copies = await self.target.read(db, home, write_id, self.op_timeout)
        except _EXPECTED as exc:
            self._read_failures += 1
            self._errors[f"read:{_name(exc)}"] += 1
            return
        self._reads += 1
        if copies < 1:
            self._ryw.append(write_id)

    async def report(self) -> Report:
        """Judge every write against what the store holds (call after `running()`)."""
        found = await self.target.found(self._writer_names)
        ended = self._ended or time.monotonic()
        report = Report(self.target.name, self.writers, ended - self._started,
                        reads=self._reads, read_failures=self._read_failures,
                        ryw_violations=len(self._ryw), errors=dict(self._errors))
        if self._ryw:
            report.examples.append(f"not read back by its session: {self._ryw[0]}")
        report.examples.extend(f"INTERNAL: {m}" for m in self._internal)
        judge(report, self._attempts, found)
        report.longest_unavailability, report.worst_home = self._longest_gap(ended)
        return report

    def _longest_gap(self, ended: float) -> tuple[float, str]:
        worst, where = 0.0, ""
        for home, times in self._acked_at.items():
            marks = [self._started, *times, ended]
            gap = max(b - a for a, b in itertools.pairwise(marks))
            if gap > worst:
                worst, where = gap, home
        return worst, where
