"""`georoute seed`: realistic, deterministic data for every shard and the document store.

Rows come from router.tools.db.seed_data (pure, seeded); this module loads them. Each shard is
replaced in one transaction: tables truncated, rows copied in with triggers off (the data is
consistent by construction), cached aggregates recomputed by recalculate_aggregates(). So a
second run with the same seed leaves byte-identical tables.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any, Protocol

from router.config import Config, ShardConfig
from router.errors import GeorouteError
from router.tools.db.connect import connect_node
from router.tools.db.documents import COURSE_CONTENT, USER_PREFERENCES, DocumentStore
from router.tools.db.seed_data import TABLE_COLUMNS, ShardData, generate_shard, split_users

__all__ = ["SEEDED_TABLES", "SeedOptions", "SeedReport", "seed", "table_checksums"]

# Load order (parents first); TRUNCATE takes them all at once.
SEEDED_TABLES: tuple[str, ...] = tuple(TABLE_COLUMNS)
_CLEARED = (*SEEDED_TABLES, "audit_log")


class _Progress(Protocol):
    def update(self, n: int) -> object: ...
    def set_description(self, desc: str) -> object: ...
    def close(self) -> object: ...


class _Line:
    """A one-line stderr progress display for when tqdm is not installed."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.desc, self.enabled = total, 0, "", enabled

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            pct = 100 * self.done // max(self.total, 1)
            print(f"\r{self.desc}: {self.done}/{self.total} rows ({pct}%)", end="",
                  file=sys.stderr, flush=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _progress(total: int, enabled: bool) -> _Progress:
    try:
        from tqdm import tqdm
    except ImportError:
        return _Line(total, enabled)
    bar: _Progress = tqdm(total=total, unit="rows", file=sys.stderr, disable=not enabled,
                          dynamic_ncols=True)
    return bar


@dataclass(frozen=True, slots=True)
class SeedOptions:
    users: int = 300            # total, split across regions (40/35/25 %)
    seed: int = 42
    documents: bool = True      # also fill course_content and user_preferences
    progress: bool = True       # progress bar on stderr
    batch_rows: int = 20_000    # rows per COPY


@dataclass(slots=True)
class SeedReport:
    seed: int
    rows: dict[str, dict[str, int]] = field(default_factory=dict)       # shard -> table -> n
    documents: dict[str, dict[str, int]] = field(default_factory=dict)  # shard -> coll -> n

    def summary(self) -> str:
        tables = [*SEEDED_TABLES, COURSE_CONTENT, USER_PREFERENCES]
        shards = list(self.rows)
        width = max(len(t) for t in tables) + 2
        lines = [f"seed {self.seed}".ljust(width) + "".join(s.rjust(15) for s in shards)]
        for table in tables:
            counts = [
                self.rows[s].get(table, self.documents.get(s, {}).get(table, 0)) for s in shards
            ]
            lines.append(table.ljust(width) + "".join(str(n).rjust(15) for n in counts))
        return "\n".join(lines)


async def _load_shard(config: Config, shard: ShardConfig, data: ShardData,
                      options: SeedOptions, bar: _Progress) -> dict[str, int]:
    conn = await connect_node(config, shard.primary)
    try:
        number = None
        if await conn.fetchval("SELECT to_regclass('georoute_shard') IS NOT NULL"):
            number = await conn.fetchval("SELECT number FROM georoute_shard")
        if number != shard.number:
            raise GeorouteError(
                f"shard {shard.name} is not migrated (georoute_shard says {number}): "
                "run `georoute db migrate` first"
            )
        async with conn.transaction():
            # Triggers off for this transaction only: rows are consistent by construction, and
            # the audit trail should not record a bulk load as user actions.
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(f"TRUNCATE {', '.join(_CLEARED)} RESTART IDENTITY CASCADE")
            counts: dict[str, int] = {}
            for table, columns in TABLE_COLUMNS.items():
                records = data.rows[table]
                for start in range(0, len(records), options.batch_rows):
                    batch = records[start : start + options.batch_rows]
                    await conn.copy_records_to_table(table, records=batch, columns=columns)
                    bar.update(len(batch))
                counts[table] = len(records)
            await conn.execute("SELECT recalculate_aggregates()")
            await conn.execute(
                "SELECT setval('invoice_number_seq', $1, $2)",
                max(data.invoice_sequence, 1), data.invoice_sequence > 0,
            )
        return counts
    finally:
        await conn.close()


async def seed(config: Config, options: SeedOptions | None = None) -> SeedReport:
    """Replace every shard's data (and its documents) with the data of `options.seed`."""
    options = options or SeedOptions()
    if options.users < len(config.shards) * 3:
        raise GeorouteError(f"--users must be at least {len(config.shards) * 3}")
    shards = list(config.shards.values())
    per_region = split_users(options.users, [s.name for s in shards])
    generated = [generate_shard(options.seed, s.name, s.number, per_region[s.name])
                 for s in shards]
    total = sum(len(r) for d in generated for r in d.rows.values())
    if options.documents:
        total += sum(len(d.course_content) + len(d.user_preferences) for d in generated)
    bar = _progress(total, options.progress)
    bar.set_description("seeding")
    report = SeedReport(seed=options.seed)
    try:
        loaded = await asyncio.gather(
            *(_load_shard(config, s, d, options, bar) for s, d in zip(shards, generated,
                                                                        strict=True))
        )
        report.rows = {s.name: c for s, c in zip(shards, loaded, strict=True)}
        if options.documents:
            async with DocumentStore(config) as store:
                await store.ensure_collections()
                for data in generated:
                    await store.delete_region(data.region)
                    n_content = await store.put_many(COURSE_CONTENT, data.course_content,
                                                     upsert=False, on_batch=bar.update)
                    n_prefs = await store.put_many(USER_PREFERENCES, data.user_preferences,
                                                   upsert=False, on_batch=bar.update)
                    report.documents[data.region] = {
                        COURSE_CONTENT: n_content, USER_PREFERENCES: n_prefs}
    finally:
        bar.close()
    return report


async def table_checksums(config: Config, tables: tuple[str, ...] = SEEDED_TABLES
                          ) -> dict[str, dict[str, tuple[int, str]]]:
    """Per shard and table, (row count, md5 over the sorted md5s of every row's text)."""

    async def one(shard: ShardConfig) -> dict[str, tuple[int, str]]:
        conn = await connect_node(config, shard.primary)
        try:
            out: dict[str, tuple[int, str]] = {}
            for table in tables:
                row: Any = await conn.fetchrow(
                    f"SELECT count(*) AS n, md5(coalesce(string_agg(h, '' ORDER BY h), '')) "
                    f"AS digest FROM (SELECT md5(t::text) AS h FROM {table} t) rows"
                )
                out[table] = (row["n"], row["digest"])
            return out
        finally:
            await conn.close()

    shards = list(config.shards.values())
    results = await asyncio.gather(*(one(s) for s in shards))
    return {s.name: r for s, r in zip(shards, results, strict=True)}
