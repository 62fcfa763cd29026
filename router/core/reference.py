"""Reference tables: every table that is not listed in router.toml's [tables] and is not one
of georoute's own per-shard tables (categories, in the seed schema). Each shard keeps a full
copy; a write to one goes to every shard's primary in one two-phase transaction, and a write
that would reach one copy only (a shard hint, a transaction pinned to one shard, a batch) is
refused, so the copies cannot drift apart."""

from __future__ import annotations

from collections.abc import Container, Sequence

__all__ = [
    "OWN_TABLES",
    "is_reference_table",
    "one_copy_refusal",
]

# georoute's bookkeeping: one per shard, different on each by design (README).
OWN_TABLES = frozenset({"schema_migrations"})
_OWN_PREFIX = "georoute_"
# Schemas whose tables are never reference tables: the catalogue, and temporary tables.
_NOT_SHARED_SCHEMAS = ("pg_catalog", "information_schema", "pg_temp", "pg_toast")


def is_reference_table(name: str, schema: str | None, sharded: Container[str]) -> bool:
    """`name` (in `schema`, when the statement names one) is a reference table."""
    if schema and schema.startswith(_NOT_SHARED_SCHEMAS):
        return False
    return name not in sharded and name not in OWN_TABLES and not name.startswith(_OWN_PREFIX)


def one_copy_refusal(tables: Sequence[str], where: str) -> str:
    """Why a write to reference tables `tables` is refused `where` it was sent."""
    names = ", ".join(tables)
    return (f"{names} {'is a reference table' if len(tables) == 1 else 'are reference tables'}"
            f" (a copy on every shard): {where} would change one copy only. Send the write "
            "without a shard hint, outside a transaction or in one begun without a shard "
            "hint: it then goes to every shard's primary, in one two-phase commit")
