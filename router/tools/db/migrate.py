"""Versioned schema migrations: the files sql/NNN_name.sql, applied in order to every shard's
primary (replicas follow by streaming replication), each in its own transaction.

`await migrate(config)` is idempotent, refuses to start when shards disagree on what has been
applied (a shard that has applied nothing is a new region: it is brought to the others'
version, and gets their reference tables' rows), writes each primary's `georoute_shard` row,
and prepares the document store.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from router.config import Config, ShardConfig
from router.core.reference import is_reference_table
from router.errors import MigrationError
from router.ha.shard_checks import TABLES_SQL
from router.tools.db.connect import connect_node

__all__ = [
    "SQL_DIR",
    "Migration",
    "MigrationReport",
    "ShardMigration",
    "applied_versions",
    "load_migrations",
    "migrate",
]

SQL_DIR = Path(__file__).resolve().parents[3] / "sql"
_FILE_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")
# Serialises concurrent `georoute db migrate` runs against one primary.
_ADVISORY_LOCK_KEY = 0x6765_6F72_6F75_7465 & 0x7FFF_FFFF_FFFF_FFFF

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS georoute_shard (
    name   text NOT NULL CONSTRAINT georoute_shard_name_check
                         CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),  -- config.SHARD_NAME
    number smallint NOT NULL CHECK (number BETWEEN 0 AND 255)
);
CREATE UNIQUE INDEX IF NOT EXISTS georoute_shard_one_row ON georoute_shard ((true));
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version:03d}_{self.name}"


@dataclass(slots=True)
class ShardMigration:
    shard: str
    version_before: int
    version_after: int
    applied: list[str] = field(default_factory=list)
    # A new shard: each reference table's rows, copied from an established shard.
    reference_rows: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class MigrationReport:
    shards: dict[str, ShardMigration]
    collections: list[str] = field(default_factory=list)

    @property
    def applied_count(self) -> int:
        return sum(len(s.applied) for s in self.shards.values())

    def summary(self) -> str:
        lines = []
        for s in self.shards.values():
            done = ", ".join(s.applied) if s.applied else "nothing to apply"
            lines.append(f"{s.shard}: version {s.version_before} -> {s.version_after} ({done})")
            if s.reference_rows:
                lines.append(f"{s.shard}: a new shard: reference tables copied from another "
                             "shard (" + ", ".join(t if n < 0 else f"{t}: {n} rows"
                                                   for t, n in s.reference_rows.items()) + ")")
        if self.collections:
            lines.append("document store: " + ", ".join(self.collections))
        return "\n".join(lines)


def load_migrations(directory: Path = SQL_DIR) -> list[Migration]:
    """The migration files in version order. Refuses gaps-free violations: duplicates, bad names."""
    if not directory.is_dir():
        # A missing directory would "apply" nothing and leave every shard without its schema.
        raise MigrationError(f"{directory}: no such migrations directory")
    migrations: list[Migration] = []
    seen: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        version = int(match.group(1))
        if version in seen:
            raise MigrationError(f"{path.name}: version {version} is also used by {seen[version]}")
        seen[version] = path.name
        migrations.append(Migration(version, match.group(2), path.read_text()))
    migrations.sort(key=lambda m: m.version)
    return migrations


async def _read_applied(conn: asyncpg.Connection) -> dict[int, str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return {}
    rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
    return {r["version"]: r["checksum"] for r in rows}


async def applied_versions(config: Config) -> dict[str, dict[int, str]]:
    """Per shard, {version: checksum} of what its primary has applied."""

    async def one(shard: ShardConfig) -> dict[int, str]:
        try:
            conn = await connect_node(config, shard.primary)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise MigrationError(
                f"cannot reach the primary of shard {shard.name} at {shard.primary.label}: {exc}"
            ) from exc
        try:
            return await _read_applied(conn)
        finally:
            await conn.close()

    shards = list(config.shards.values())
    results = await asyncio.gather(*(one(s) for s in shards))
    return {s.name: r for s, r in zip(shards, results, strict=True)}


def _check_consistent(applied: dict[str, dict[int, str]], migrations: list[Migration]) -> None:
    # A shard with nothing applied is a new one (a region added to router.toml): it is brought
    # to the schema like the first shards were. Only shards that have applied something must
    # agree.
    described = {
        shard: (max(v) if v else 0, sorted(v)) for shard, v in applied.items() if v
    }
    if len({tuple(v) for _, v in described.values()}) > 1:
        detail = "; ".join(
            f"{shard} at version {top} (applied {versions or 'none'})"
            for shard, (top, versions) in described.items()
        )
        raise MigrationError(
            f"shards are at different schema versions: {detail}. Bring them to the same "
            "version by hand before migrating."
        )
    by_version = {m.version: m for m in migrations}
    for shard, versions in applied.items():
        for version, checksum in versions.items():
            known = by_version.get(version)
            if known is None:
                raise MigrationError(
                    f"shard {shard} has applied version {version}, which is not in sql/"
                )
            if known.checksum != checksum:
                raise MigrationError(
                    f"sql/{known.label}.sql changed after it was applied on shard {shard} "
                    "(checksum differs): add a new migration instead of editing an applied one"
                )


async def _migrate_shard(
    config: Config, shard: ShardConfig, migrations: list[Migration]
) -> ShardMigration:
    conn = await connect_node(config, shard.primary)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
        async with conn.transaction():
            await conn.execute(_BOOTSTRAP)
            current = await conn.fetchrow("SELECT name, number FROM georoute_shard")
            if current is None:
                await conn.execute(
                    "INSERT INTO georoute_shard (name, number) VALUES ($1, $2)",
                    shard.name,
                    shard.number,
                )
            elif (current["name"], current["number"]) != (shard.name, shard.number):
                raise MigrationError(
                    f"the primary of shard {shard.name} says it is shard {current['name']} "
                    f"number {current['number']}, but router.toml says {shard.name} number "
                    f"{shard.number}: ids already minted there would route wrongly"
                )
        applied = await _read_applied(conn)
        report = ShardMigration(shard.name, max(applied, default=0), max(applied, default=0))
        for migration in migrations:
            if migration.version in applied:
                continue
            try:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"sql/{migration.label}.sql failed on shard {shard.name} "
                    f"[{exc.sqlstate}]: {exc}"
                ) from exc
            report.applied.append(migration.label)
            report.version_after = migration.version
        return report
    finally:
        await conn.close()


async def copy_reference_tables(config: Config, source: ShardConfig,
                                target: ShardConfig) -> dict[str, int]:
    """A new shard's copy of every reference table (router/core/reference.py), from an
    established shard's primary: emptied, then filled with the source's rows, in one
    transaction with triggers and foreign-key checks off (the rows are copies of rows that
    passed them, in any order). Read in one snapshot of the source.

    A reference-table write between this copy and the routers' SIGHUP reaches only the shards
    the routers knew; the routers' shard check (georoute_reference_table_diverged) and
    `georoute health` show such a difference."""
    src = await connect_node(config, source.primary)
    dst = await connect_node(config, target.primary)
    copied: dict[str, int] = {}
    try:
        async with src.transaction(isolation="repeatable_read", readonly=True), \
                dst.transaction():
            await dst.execute("SET LOCAL session_replication_role = replica")
            present = {tuple(r) for r in await dst.fetch(TABLES_SQL)}
            for schema, name in await src.fetch(TABLES_SQL):
                if not is_reference_table(name, schema, config.tables):
                    continue
                if (schema, name) not in present:
                    # Made outside the migrations (by hand on each shard): not here, so not
                    # copied; `georoute health` shows the copy missing.
                    copied[f"{schema}.{name} (missing here, not copied)"] = -1
                    continue
                table = f"{_ident(schema)}.{_ident(name)}"
                buffer = io.BytesIO()
                await src.copy_from_query(f"SELECT * FROM {table}", output=buffer,
                                          format="binary")
                buffer.seek(0)
                await dst.execute(f"DELETE FROM {table}")
                await dst.copy_to_table(name, schema_name=schema, source=buffer,
                                        format="binary")
                label = name if schema == "public" else f"{schema}.{name}"
                copied[label] = int(await dst.fetchval(f"SELECT count(*) FROM {table}"))
    except asyncpg.PostgresError as exc:
        raise MigrationError(f"copying the reference tables from {source.name} to the new "
                             f"shard {target.name} failed [{exc.sqlstate}]: {exc}") from exc
    finally:
        await src.close()
        await dst.close()
    return copied


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def migrate(
    config: Config, *, sql_dir: Path = SQL_DIR, documents: bool = True
) -> MigrationReport:
    """Bring every shard to the newest schema; see the module docstring."""
    migrations = load_migrations(sql_dir)
    applied = await applied_versions(config)
    _check_consistent(applied, migrations)
    shards = list(config.shards.values())
    results = await asyncio.gather(
        *(_migrate_shard(config, s, migrations) for s in shards), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        first = failures[0]
        if isinstance(first, MigrationError):
            raise first
        raise MigrationError(f"migration failed: {first}") from first
    report = MigrationReport(
        shards={r.shard: r for r in results if isinstance(r, ShardMigration)}
    )
    new = [s for s in shards if not applied[s.name]]
    established = [s for s in shards if applied[s.name]]
    if new and established:
        for shard in new:
            report.shards[shard.name].reference_rows = await copy_reference_tables(
                config, established[0], shard)
    if documents:
        from router.tools.db.documents import ensure_collections

        report.collections = await ensure_collections(config)
    return report
