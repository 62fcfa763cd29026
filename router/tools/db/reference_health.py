"""`georoute health`'s check of the reference tables (router/core/reference.py): on every
shard's primary, each one's row count and a hash of its contents, and which of them differ
between shards (a copy written by hand, or by a function the router cannot see into)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from router.config import Config
from router.ha.shard_checks import CopyState, read_reference_copies
from router.tools.db.connect import connect_node

__all__ = ["CopyState", "ReferenceReport", "ReferenceTable", "check_reference_tables"]

@dataclass(slots=True)
class ReferenceTable:
    name: str  # "categories", or "schema.table" outside public
    copies: dict[str, CopyState | None] = field(default_factory=dict)  # None: no such table

    @property
    def agree(self) -> bool:
        states = list(self.copies.values())
        return None not in states and len(set(states)) == 1

    def as_dict(self) -> dict[str, Any]:
        return {"table": self.name, "agree": self.agree,
                "copies": {shard: None if c is None else {"rows": c.rows, "hash": c.digest}
                           for shard, c in self.copies.items()}}


@dataclass(slots=True)
class ReferenceReport:
    tables: list[ReferenceTable]
    errors: dict[str, str] = field(default_factory=dict)  # shard -> why it was not read

    @property
    def agree(self) -> bool:
        return not self.errors and all(t.agree for t in self.tables)

    @property
    def differing(self) -> list[str]:
        return [t.name for t in self.tables if not t.agree]

    def as_dict(self) -> dict[str, Any]:
        return {"agree": self.agree, "differing": self.differing,
                "tables": [t.as_dict() for t in self.tables], "errors": self.errors}

    def rows(self, shards: list[str]) -> list[tuple[str, ...]]:
        """One row per table for the text report: each shard's count and hash prefix."""
        out = []
        for table in self.tables:
            cells = []
            for shard in shards:
                copy = table.copies.get(shard)
                cells.append("missing" if copy is None else f"{copy.rows} ({copy.digest[:8]})")
            out.append((table.name, *cells, "yes" if table.agree else "DIFFER"))
        return out


async def _read_shard(config: Config, shard: str) -> dict[str, CopyState]:
    conn = await connect_node(config, config.shards[shard].primary)
    try:
        return await read_reference_copies(conn, config.tables)
    finally:
        await conn.close()


async def check_reference_tables(config: Config) -> ReferenceReport:
    shards = list(config.shards)
    results = await asyncio.gather(*(_read_shard(config, s) for s in shards),
                                   return_exceptions=True)
    report = ReferenceReport([])
    read: dict[str, dict[str, CopyState]] = {}
    for shard, result in zip(shards, results, strict=True):
        if isinstance(result, (OSError, asyncpg.PostgresError, TimeoutError)):
            report.errors[shard] = f"{type(result).__name__}: {result}"[:120]
        elif isinstance(result, BaseException):
            raise result
        else:
            read[shard] = result
    names = sorted({name for tables in read.values() for name in tables})
    for name in names:
        report.tables.append(ReferenceTable(name, {s: read[s].get(name) for s in read}))
    return report
