"""Reference tables: every table that is not listed in router.toml's [tables] and is not one
of georoute's own per-shard tables (categories, in the seed schema). Each shard keeps a full
copy; a write to one goes to every shard's primary in one two-phase transaction, and a write
that would reach one copy only (a shard hint, a transaction pinned to one shard, a batch) is
refused, so the copies cannot drift apart."""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from pglast import ast, parse_sql
from pglast.stream import RawStream

from router.core.errors import CrossShardError
from router.core.sqltree import walk

__all__ = [
    "OWN_TABLES",
    "WRITTEN_ROW",
    "compared_write",
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


# The column compared_write puts first in a reference write's RETURNING.
WRITTEN_ROW = "_georoute_written_row"
_WRITES = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)


def compared_write(sql: str, sharded: Container[str]) -> tuple[str, bool]:
    """A write to a reference table, run on every shard, with every row it writes (or deletes)
    returned first, whole, as jsonb (`WRITTEN_ROW`): equal statuses do not make equal copies (a
    default of georoute_id() or now(), a call of random() is each shard's own), equal rows do.
    Also whether the statement has a RETURNING of its own (the reply keeps only that). A write
    to a reference table inside a WITH is refused: its rows cannot be compared."""
    stmt: Any = parse_sql(sql)[0].stmt
    for node in walk(stmt):
        rel = getattr(node, "relation", None) if isinstance(node, _WRITES) else None
        if (node is not stmt and rel is not None
                and is_reference_table(str(rel.relname), rel.schemaname, sharded)):
            raise CrossShardError(
                f"the write to {rel.relname} (a reference table) inside a WITH cannot be "
                "checked to write the same rows on every shard: send it as a statement of "
                "its own")
    rel = stmt.relation if isinstance(stmt, _WRITES) else None
    if rel is None or not is_reference_table(str(rel.relname), rel.schemaname, sharded):
        return sql, False  # TRUNCATE: the same on every copy
    name = str(rel.alias.aliasname if rel.alias is not None else rel.relname)
    row = ast.FuncCall(
        funcname=(ast.String(sval="pg_catalog"), ast.String(sval="to_jsonb")),
        args=(ast.ColumnRef(fields=(ast.String(sval=name), ast.A_Star())),),
        agg_within_group=False, agg_star=False, agg_distinct=False, func_variadic=False,
        funcformat=0)
    clause = stmt.returningClause
    own = tuple(clause.exprs or ()) if clause is not None else ()
    stmt.returningClause = ast.ReturningClause(
        options=clause.options if clause is not None else None,
        exprs=(ast.ResTarget(name=WRITTEN_ROW, val=row), *own))
    return str(RawStream()(stmt)), bool(own)

