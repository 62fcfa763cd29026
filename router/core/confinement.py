# pglast's AST types mark every field Optional, though the parser fills the ones read here;
# checking each would bury the logic, so these error codes are off for this module only.
# mypy: disable-error-code="arg-type,index,assignment,union-attr,misc,attr-defined"
"""Which shards a statement may touch, read off PostgreSQL's parse tree (pure, no I/O).

The rule (README, "How a request is routed"): a statement runs on one shard only when every
reference to a sharded table in it (the main query, every subquery, CTE, set-operation branch,
EXISTS, MERGE source, INSERT ... SELECT) is confined to that shard. A reference is confined when
it is *pinned*: an equality (or IN list) on one of its own shard-key columns against a parameter
or a constant, in its own scope (the top-level AND of its WHERE, or of the ON of a join that
filters it); or when it is *joined* on a shard key to a confined reference. A call of a function
declared in `router.sharded_functions` is a reference too, pinned by an id or a region among
its arguments. Rows an INSERT (or MERGE) writes carry their shard in their own key columns.

`confinement(stmt, ...)` records the references, pins, joins and written rows as data; routing.py
binds the parameters and decides (one shard, several, or unknown: refused).

What is deliberately *not* taken as a pin, because it would confine the wrong rows:
- an equality under OR or NOT, or in a HAVING, or on a column wrapped in a function;
- `a.key IS NOT DISTINCT FROM b.key` as a join (NULL meets NULL, and NULL keys are on every
  shard); with a value it pins, as `=` does;
- an unqualified column that does not name a key of exactly one sharded table of its own scope
  (a correlated column must be qualified to count: an inner table's column of the same name
  would take precedence in PostgreSQL, and we do not know every table's columns);
- a condition in an outer join's ON, for its preserved side (it filters only the other side);
- a MERGE with WHEN NOT MATCHED BY SOURCE (it touches target rows no condition confines);
- joins to the output of a CTE or a subquery in FROM (the columns' origin is not followed).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind, CmdType, JoinType, MergeMatchKind, SubLinkType

from router.config import TableConfig
from router.core.sqltree import (
    children,
    column_name,
    conjuncts,
    const_value,
    is_null,
    param_number,
    uncast,
)

__all__ = [
    "LOCAL_TABLES",
    "Confinement",
    "Edge",
    "KeyKind",
    "KeyRef",
    "Pin",
    "Ref",
    "RowKey",
    "confinement",
]


class KeyKind(enum.Enum):
    REGION = "region"  # the value is a shard's name
    ID = "id"  # the value is a shard-carrying id


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A place a shard key's value is read from: bound parameter $param, or a constant.
    With `array`, the parameter is an array (`key = ANY($1)`): each element is a value."""

    kind: KeyKind
    column: str
    table: str
    param: int | None = None  # 1-based parameter number
    value: Any = None
    array: bool = False


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference to a sharded table, or one call of a sharded function (`function`)."""

    table: str
    function: bool = False


@dataclass(frozen=True, slots=True)
class Pin:
    """Reference `ref` holds only rows whose key is one of `values` (an IN list has several).
    A `loose` pin is a sharded function's arguments: those that name a shard count."""

    ref: int
    values: tuple[KeyRef, ...]
    loose: bool = False


@dataclass(frozen=True, slots=True)
class Edge:
    """Reference `target` meets only rows on the shard(s) of `source` (a join on shard keys)."""

    source: int
    target: int


@dataclass(frozen=True, slots=True)
class RowKey:
    """A shard-key column of a row an INSERT or MERGE writes: its value is `key` (a parameter or
    a constant), or the key of reference `ref`; with neither, an expression nobody can check."""

    table: str
    column: str
    kind: KeyKind
    key: KeyRef | None = None
    ref: int | None = None


@dataclass(frozen=True, slots=True)
class Confinement:
    refs: tuple[Ref, ...] = ()
    pins: tuple[Pin, ...] = ()
    edges: tuple[Edge, ...] = ()
    # Rows written (only their shard-key columns; keys left to their defaults are not listed).
    rows: tuple[tuple[RowKey, ...], ...] = ()
    # Shard-key columns an UPDATE, an upsert or a MERGE sets: the new value must stay on the
    # row's shard. A KeyRef with neither param nor value was set to an expression.
    assigned: tuple[KeyRef, ...] = ()
    # Why rows written to a sharded table cannot be checked at all (an INSERT without its
    # column list), or None.
    unchecked: str | None = None
    # The references in the outermost query's own FROM (a cross-shard read is merged over them).
    top: tuple[int, ...] = ()
    # Outer joins of the outermost query's FROM whose preserved side holds no sharded table
    # (a reference table, VALUES, a function) while the other side does: each shard would
    # keep the preserved rows its own rows do not match, so a cross-shard read is refused.
    unanchored: tuple[str, ...] = ()


# Values whose shard is wherever the statement runs: made on the shard itself.
_LOCAL_FUNCS = frozenset({"georoute_id", "georoute_region", "gen_random_uuid", "uuidv4", "uuidv7"})
# georoute's own tables, one per shard with different rows: never a reference table; a
# statement on one needs a shard hint.
LOCAL_TABLES = frozenset({"georoute_idempotency", "georoute_shard", "schema_migrations"})
# Schemas whose tables are never the sharded ones.
_OTHER_SCHEMAS = ("pg_catalog", "information_schema")
_STATEMENTS = (ast.SelectStmt, ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt)
_SKIPPED_SLOTS = frozenset({"lockingClause", "intoClause", "location"})


def _local_value(node: Any) -> bool:
    """DEFAULT, NULL, or a value made on the shard that runs the statement (georoute_id())."""
    inner = uncast(node)
    if isinstance(inner, ast.SetToDefault) or is_null(inner):
        return True
    if isinstance(inner, ast.FuncCall) and not inner.args:
        names = [n.sval for n in inner.funcname]
        return names[-1] in _LOCAL_FUNCS and (len(names) == 1 or names[0] in ("public",
                                                                             "pg_catalog"))
    return False


# A FuncCall -> (its name, the positions of its shard-carrying arguments), or None.
ShardedFunction = Callable[[Any], "tuple[str, tuple[int, ...]] | None"]


class _Scope:
    """The FROM entries one query level sees, innermost first through `parent`."""

    __slots__ = ("ctes", "entries", "parent", "refs")

    def __init__(self, parent: _Scope | None, ctes: set[str] | None = None) -> None:
        self.parent = parent
        self.entries: dict[str, int | None] = {}  # alias -> ref (None: not a sharded table)
        self.ctes: set[str] = set() if ctes is None else ctes
        self.refs: list[int] = []  # the sharded-table references of this level

    def hidden(self) -> _Scope:
        """What a non-LATERAL subquery in FROM sees of this level: its CTEs, not its entries
        (PostgreSQL resolves such a name to an outer query instead)."""
        return _Scope(self.parent, self.ctes)

    def sees_cte(self, name: str) -> bool:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return True
            scope = scope.parent
        return False


@dataclass(frozen=True, slots=True)
class _Out:
    """One output column of a query: its value when known (for INSERT ... SELECT and IN)."""

    key: tuple[int | None, Any] | None = None  # (param, constant)
    ref: tuple[int, KeyKind] | None = None  # a key column of a reference of the query
    local: bool = False  # made on the shard itself (DEFAULT, NULL, georoute_id())


class _Analyzer:
    def __init__(self, tables: Mapping[str, TableConfig],
                 sharded_function: ShardedFunction) -> None:
        self._tables = tables
        self._sharded_function = sharded_function
        self.refs: list[Ref] = []
        self.pins: list[Pin] = []
        self.edges: list[Edge] = []
        self.rows: list[tuple[RowKey, ...]] = []
        self.assigned: list[KeyRef] = []
        self.unchecked: str | None = None
        self.renamed: set[int] = set()  # refs with a column alias list: names are not keys
        self.top: tuple[int, ...] = ()
        self.unanchored: list[str] = []

    def result(self) -> Confinement:
        return Confinement(tuple(self.refs), tuple(self.pins), tuple(dict.fromkeys(self.edges)),
                           tuple(self.rows), tuple(self.assigned), self.unchecked,
                           self.top, tuple(self.unanchored))

    def key_kind(self, table: str, column: str) -> KeyKind | None:
        cfg = self._tables.get(table)
        if cfg is None:
            return None
        if column == cfg.region_column:
            return KeyKind.REGION
        if column in cfg.id_columns:
            return KeyKind.ID
        return None

    def _sharded(self, rv: Any, scope: _Scope, written: bool = False) -> bool:
        """Whether a RangeVar names a configured sharded table (not a CTE, not a temp table).
        The table a statement writes is always a table: a CTE of its name does not hide it."""
        schema = rv.schemaname
        if schema is None and not written and scope.sees_cte(rv.relname):
            return False
        if schema is not None and (schema in _OTHER_SCHEMAS or schema.startswith("pg_temp")):
            return False
        name = rv.relname
        return (name in self._tables or name in LOCAL_TABLES) and rv.relpersistence != "t"

    def _new_ref(self, ref: Ref) -> int:
        self.refs.append(ref)
        return len(self.refs) - 1

    # ---- statements ------------------------------------------------------------------------

    def statement(self, node: Any, parent: _Scope | None) -> list[_Out] | None:
        """Analyze one statement; a plain SELECT returns its output columns."""
        if isinstance(node, ast.SelectStmt):
            return self.select(node, parent)
        if isinstance(node, ast.InsertStmt):
            self.insert(node, parent)
        elif isinstance(node, ast.UpdateStmt):
            self.update(node, parent)
        elif isinstance(node, ast.DeleteStmt):
            self.delete(node, parent)
        elif isinstance(node, ast.MergeStmt):
            self.merge(node, parent)
        elif isinstance(node, (ast.ExplainStmt, ast.CreateTableAsStmt)):
            self.statement(node.query, parent)
        else:  # DDL and the rest: any sharded table named in it is a reference nothing pins
            self.expressions(node, _Scope(parent))
        return None

    def with_clause(self, clause: Any, scope: _Scope) -> None:
        if clause is None:
            return
        for cte in clause.ctes or ():
            if clause.recursive:
                scope.ctes.add(cte.ctename)
            self.statement(cte.ctequery, _Scope(scope))
            scope.ctes.add(cte.ctename)

    def select(self, stmt: Any, parent: _Scope | None) -> list[_Out] | None:
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        if stmt.larg is not None or stmt.rarg is not None:  # UNION / INTERSECT / EXCEPT
            self.statement(stmt.larg, scope)
            self.statement(stmt.rarg, scope)
            self.expressions((stmt.sortClause, stmt.limitCount, stmt.limitOffset), scope)
            return None
        for item in stmt.fromClause or ():
            self.from_item(item, scope)
        if parent is None:
            self.top = tuple(scope.refs)
        self.where(stmt.whereClause, scope, set(scope.refs))
        self.expressions((stmt.targetList, stmt.groupClause, stmt.havingClause,
                          stmt.windowClause, stmt.sortClause, stmt.distinctClause,
                          stmt.limitCount, stmt.limitOffset, stmt.valuesLists), scope)
        if stmt.valuesLists:
            rows = stmt.valuesLists
            return [self.out(expr, scope) for expr in rows[0]] if len(rows) == 1 else None
        return [self.out(t.val, scope) for t in stmt.targetList or ()]

    def out(self, expr: Any, scope: _Scope) -> _Out:
        param = param_number(expr)
        if param is not None:
            return _Out(key=(param, None))
        value = const_value(expr)
        if value is not None:
            return _Out(key=(None, value))
        if _local_value(expr):
            return _Out(local=True)
        col = self.column(expr, scope)
        if col is None or col[0] not in scope.refs:  # an outer query's column: not this one's
            return _Out()
        return _Out(ref=(col[0], col[1]))

    def insert(self, stmt: Any, parent: _Scope | None) -> None:
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        rel = stmt.relation
        table = rel.relname
        sharded = self._sharded(rel, scope, written=True)
        select = stmt.selectStmt
        rows: list[list[_Out]] = []
        if select is None:
            rows = [[]]  # DEFAULT VALUES: every key is made on the shard
        elif (isinstance(select, ast.SelectStmt) and select.valuesLists
              and select.withClause is None and not select.fromClause):
            self.expressions(select.valuesLists, scope)
            rows = [[self.out(expr, scope) for expr in row] for row in select.valuesLists]
        else:
            outs = self.statement(select, scope)
            rows = [outs] if outs is not None else [[_Out()] * len(stmt.cols or ())]
        if sharded:
            if stmt.cols is None and select is not None:
                self.unchecked = (f"INSERT INTO {table} without a column list: name the columns, "
                                  "so the router can read the row's shard key")
            else:
                for row in rows:
                    self.rows.append(self.row_keys(table, [c.name for c in stmt.cols or ()], row))
        # The target's own columns are visible to ON CONFLICT and RETURNING (not as a read).
        target = _Scope(scope)
        target.entries[rel.alias.aliasname if rel.alias else table] = None
        target.entries["excluded"] = None
        conflict = stmt.onConflictClause
        if conflict is not None:
            if sharded:
                self.arbiter(table, conflict)
            self.assign(table, rel, conflict.targetList or (), excluded=True)
            self.expressions((conflict.targetList, conflict.whereClause, conflict.infer), target)
        self.expressions(stmt.returningClause, target)

    def row_keys(self, table: str, columns: list[str], row: list[_Out]) -> tuple[RowKey, ...]:
        keys: list[RowKey] = []
        for column, out in zip(columns, row, strict=False):
            kind = self.key_kind(table, column)
            if kind is None or out.local:
                continue
            if out.key is not None:
                param, value = out.key
                keys.append(RowKey(table, column, kind, KeyRef(kind, column, table, param, value)))
            elif out.ref is not None and out.ref[1] is kind:
                keys.append(RowKey(table, column, kind, ref=out.ref[0]))
            else:
                keys.append(RowKey(table, column, kind))
        return tuple(keys)

    def arbiter(self, table: str, conflict: Any) -> None:
        """ON CONFLICT must name a shard-key column among its arbiter's columns: a unique index
        holds per shard, so a conflict on another (an email) would be looked for on this
        shard only, where one database would have found it on any."""
        infer = conflict.infer
        names = [e.name for e in (infer.indexElems or ()) if e.name] if infer else []
        if not any(self.key_kind(table, name) for name in names):
            self.unchecked = (f"ON CONFLICT on {table} must name one of its shard-key columns "
                              "(a unique index holds per shard, so a conflict on another "
                              "column could be on another shard)")

    def target(self, rel: Any, scope: _Scope) -> set[int]:
        """The table an UPDATE, DELETE or MERGE writes: a reference of its scope (a table,
        even where a CTE has its name)."""
        alias = rel.alias.aliasname if rel.alias is not None else rel.relname
        if not self._sharded(rel, scope, written=True):
            scope.entries[alias] = None
            return set()
        ref = self._new_ref(Ref(rel.relname))
        scope.entries[alias] = ref
        scope.refs.append(ref)
        if rel.alias is not None and rel.alias.colnames:
            self.renamed.add(ref)
        return {ref}

    def update(self, stmt: Any, parent: _Scope | None) -> None:
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        self.target(stmt.relation, scope)
        for item in stmt.fromClause or ():
            self.from_item(item, scope)
        if parent is None:
            self.top = tuple(scope.refs)
        self.where(stmt.whereClause, scope, set(scope.refs))
        self.assign(stmt.relation.relname, stmt.relation, stmt.targetList or ())
        self.expressions((stmt.targetList, stmt.returningClause), scope)

    def delete(self, stmt: Any, parent: _Scope | None) -> None:
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        self.target(stmt.relation, scope)
        for item in stmt.usingClause or ():
            self.from_item(item, scope)
        self.where(stmt.whereClause, scope, set(scope.refs))
        self.expressions(stmt.returningClause, scope)

    def merge(self, stmt: Any, parent: _Scope | None) -> None:
        """MERGE is the source LEFT JOIN the target ON its condition: the condition confines
        the target only; the source must be confined in its own right."""
        scope = _Scope(parent)
        self.with_clause(stmt.withClause, scope)
        rel = stmt.relation
        target = self.target(rel, scope)
        source = self.from_item(stmt.sourceRelation, scope)
        clauses = stmt.mergeWhenClauses or ()
        if any(c.matchKind == MergeMatchKind.MERGE_WHEN_NOT_MATCHED_BY_SOURCE for c in clauses):
            target = set()  # rows no source row matched are acted on too: nothing confines them
        self.where(stmt.joinCondition, scope, target, sources=source | target)
        table = rel.relname
        for clause in clauses:
            self.expressions((clause.condition, clause.targetList, clause.values), scope)
            if clause.commandType == CmdType.CMD_UPDATE:
                self.assign(table, rel, clause.targetList or ())
            elif clause.commandType == CmdType.CMD_INSERT and self._sharded(rel, scope, True):
                if not clause.targetList and not clause.values:  # DEFAULT VALUES: all local
                    self.rows.append(())
                    continue
                if not clause.targetList:
                    self.unchecked = (f"MERGE ... INSERT into {table} without a column list: "
                                      "name the columns, so the router can read the row's "
                                      "shard key")
                    continue
                row = [self.out(expr, scope) for expr in clause.values or ()]
                self.rows.append(self.row_keys(table, [t.name for t in clause.targetList], row))
        self.expressions(stmt.returningClause, scope)

    def assign(self, table: str, rel: Any, targets: Iterable[Any], excluded: bool = False) -> None:
        """The shard-key columns `SET` assigns: each must keep the row on its shard."""
        # With an alias the table's own name is another FROM item's (PostgreSQL hides it).
        alias = rel.alias.aliasname if rel.alias is not None else table
        own = (None, alias, "excluded") if excluded else (None, alias)
        target: Any
        for target in targets:
            kind = self.key_kind(table, target.name)
            if kind is None:
                continue
            val = target.val
            if isinstance(val, ast.MultiAssignRef):  # SET (a, b) = ($1, $2)
                source = val.source
                if not isinstance(source, ast.RowExpr):  # = (SELECT ...): an expression
                    self.assigned.append(KeyRef(kind, target.name, table))
                    continue
                number = (val.colno or 1) - 1
                if not 0 <= number < len(source.args or ()):  # PostgreSQL refuses it anyway
                    self.assigned.append(KeyRef(kind, target.name, table))
                    continue
                val = source.args[number]
            inner = val.arg if isinstance(val, ast.TypeCast) else val
            if isinstance(inner, ast.SetToDefault) or is_null(inner):
                continue  # DEFAULT is made on this shard; NULL is the column's own business
            name = column_name(val)
            if name is not None and name[1] == target.name and name[0] in own:
                continue  # SET region = region, or the upsert's own inserted value
            param = param_number(val)
            value = None if param is not None else const_value(val)
            self.assigned.append(KeyRef(kind, target.name, table, param=param, value=value))

    # ---- FROM and conditions ---------------------------------------------------------------

    def from_item(self, item: Any, scope: _Scope) -> set[int]:
        """Register a FROM entry in `scope`; the sharded-table references under it."""
        if isinstance(item, ast.RangeVar):
            alias = item.alias.aliasname if item.alias is not None else item.relname
            if not self._sharded(item, scope):
                scope.entries[alias] = None
                return set()
            ref = self._new_ref(Ref(item.relname))
            scope.entries[alias] = ref
            scope.refs.append(ref)
            if item.alias is not None and item.alias.colnames:  # AS a(x, y): columns renamed
                self.renamed.add(ref)
            return {ref}
        if isinstance(item, ast.JoinExpr):
            before = set(scope.entries)
            left = self.from_item(item.larg, scope)
            right = self.from_item(item.rarg, scope)
            # The ON sees the join's own inputs and the outer queries, not this level's other
            # FROM items (a name PostgreSQL would resolve to an outer query).
            own = {name: ref for name, ref in scope.entries.items() if name not in before}
            on = _Scope(scope.parent, scope.ctes)
            on.entries.update(own)
            on.refs.extend(r for r in scope.refs if r in left | right)
            kind = item.jointype
            if kind == JoinType.JOIN_INNER:
                filtered = left | right
            elif kind == JoinType.JOIN_LEFT:
                filtered = right
            elif kind == JoinType.JOIN_RIGHT:
                filtered = left
            else:  # FULL: the ON filters neither side
                filtered = set()
            if scope.parent is None and kind != JoinType.JOIN_INNER:
                preserved = {JoinType.JOIN_LEFT: (left,), JoinType.JOIN_RIGHT: (right,)}.get(
                    kind, (left, right))
                if any(not side for side in preserved) and left | right:
                    self.unanchored.append(", ".join(
                        dict.fromkeys(self.refs[r].table for r in sorted(left | right))))
            self.where(item.quals, on, filtered)
            if not item.isNatural:
                for name in item.usingClause or ():
                    self.using(name.sval, left, right, filtered)
            if item.alias is not None:  # (a JOIN b) AS j hides a and b by name
                for name in own:
                    del scope.entries[name]
                scope.entries[item.alias.aliasname] = None
            return left | right
        if isinstance(item, ast.RangeSubselect):
            self.statement(item.subquery, scope if item.lateral else scope.hidden())
            if item.alias is not None:
                scope.entries[item.alias.aliasname] = None
            return set()
        if isinstance(item, ast.RangeTableSample):
            return self.from_item(item.relation, scope)
        # RangeFunction (a sharded function in FROM is a reference), XMLTABLE, JSON_TABLE ...
        self.expressions(item, scope)
        alias = getattr(item, "alias", None)
        if alias is not None:
            scope.entries[alias.aliasname] = None
        return set()

    def using(self, column: str, left: set[int], right: set[int], filtered: set[int]) -> None:
        """JOIN ... USING (col): an equality of the one side's col and the other's."""
        lhs = [r for r in left
               if r not in self.renamed and self.key_kind(self.refs[r].table, column)]
        rhs = [r for r in right
               if r not in self.renamed and self.key_kind(self.refs[r].table, column)]
        if len(lhs) != 1 or len(rhs) != 1:
            return
        a, b = lhs[0], rhs[0]
        if self.key_kind(self.refs[a].table, column) is not self.key_kind(self.refs[b].table,
                                                                         column):
            return
        if b in filtered:
            self.edges.append(Edge(a, b))
        if a in filtered:
            self.edges.append(Edge(b, a))

    def column(self, node: Any, scope: _Scope) -> tuple[int, KeyKind, str] | None:
        """The reference, key kind and name of a column, when it is a shard-key column. A cast
        column (`user_id::varchar(8)`) is not the key: the cast may cut or change it."""
        name = column_name(node)
        if name is None:
            return None
        qualifier, column = name
        if qualifier is None:  # only this level: we do not know every table's columns
            found = [(r, k, column) for r in scope.refs if r not in self.renamed
                     and (k := self.key_kind(self.refs[r].table, column)) is not None]
            return found[0] if len(found) == 1 else None
        level: _Scope | None = scope
        while level is not None:
            if qualifier in level.entries:
                ref = level.entries[qualifier]
                if ref is None or ref in self.renamed:
                    return None
                kind = self.key_kind(self.refs[ref].table, column)
                return (ref, kind, column) if kind is not None else None
            level = level.parent
        return None

    def where(self, expr: Any, scope: _Scope, filtered: set[int],
              sources: set[int] | None = None) -> None:
        """The conjuncts of a condition that filters the references in `filtered`: pins on
        them, and joins into them from any reference (`sources` limits the joins' origins)."""
        for conj in conjuncts(expr):
            if not self.conjunct(conj, scope, filtered, sources):
                self.expressions(conj, scope)

    def conjunct(self, conj: Any, scope: _Scope, filtered: set[int],
                 sources: set[int] | None) -> bool:
        """Record a pin or a join from one conjunct; True when its sub-queries were analyzed
        here (an IN (SELECT ...)), so the caller does not walk them again."""
        if isinstance(conj, ast.SubLink):
            return self.in_subquery(conj, scope, filtered, sources)
        if not isinstance(conj, ast.A_Expr) or [n.sval for n in conj.name or ()] != ["="]:
            return False
        if conj.kind in (A_Expr_Kind.AEXPR_OP, A_Expr_Kind.AEXPR_NOT_DISTINCT):
            left = self.column(conj.lexpr, scope)
            right = self.column(conj.rexpr, scope)
            if left is not None and right is not None:
                # Only `=` joins: IS NOT DISTINCT FROM also matches a NULL key with a NULL key,
                # and a NULL key (a coupon for any course) is on every shard.
                if left[1] is right[1] and conj.kind == A_Expr_Kind.AEXPR_OP:
                    self.join(left[0], right[0], filtered, sources)
            elif left is not None:
                self.pin(left, conj.rexpr, filtered)
            elif right is not None:
                self.pin(right, conj.lexpr, filtered)
        elif conj.kind == A_Expr_Kind.AEXPR_IN:  # col IN (a, b)
            col = self.column(conj.lexpr, scope)
            if col is not None and col[0] in filtered and isinstance(conj.rexpr, (list, tuple)):
                values = [self.key_ref(col, expr) for expr in conj.rexpr]
                if values and all(v is not None for v in values):
                    self.pins.append(Pin(col[0], tuple(v for v in values if v is not None)))
        elif conj.kind == A_Expr_Kind.AEXPR_OP_ANY:  # col = ANY($1)
            col = self.column(conj.lexpr, scope)
            param = param_number(conj.rexpr)
            if col is not None and col[0] in filtered and param is not None:
                table = self.refs[col[0]].table
                key = KeyRef(col[1], col[2], table, param=param, array=True)
                self.pins.append(Pin(col[0], (key,)))
        return False

    def key_ref(self, col: tuple[int, KeyKind, str], expr: Any) -> KeyRef | None:
        param = param_number(expr)
        value = None if param is not None else const_value(expr)
        if param is None and value is None:
            return None
        return KeyRef(col[1], col[2], self.refs[col[0]].table, param=param, value=value)

    def pin(self, col: tuple[int, KeyKind, str], expr: Any, filtered: set[int]) -> None:
        if col[0] not in filtered:
            return
        ref = self.key_ref(col, expr)
        if ref is not None:
            self.pins.append(Pin(col[0], (ref,)))

    def join(self, a: int, b: int, filtered: set[int], sources: set[int] | None) -> None:
        if b in filtered and (sources is None or a in sources):
            self.edges.append(Edge(a, b))
        if a in filtered and (sources is None or b in sources):
            self.edges.append(Edge(b, a))

    def in_subquery(self, link: Any, scope: _Scope, filtered: set[int],
                    sources: set[int] | None) -> bool:
        """`col IN (SELECT key FROM ...)` as a top-level conjunct: a join of the two keys."""
        oper = [n.sval for n in link.operName or ()]
        if link.subLinkType != SubLinkType.ANY_SUBLINK or oper not in ([], ["="]):
            return False
        outs = self.statement(link.subselect, scope)
        self.expressions(link.testexpr, scope)
        col = self.column(link.testexpr, scope)
        inner = outs[0].ref if outs is not None and len(outs) == 1 else None
        if col is None or inner is None or col[1] is not inner[1]:
            return True
        if col[0] in filtered and (sources is None or inner[0] in sources):
            self.edges.append(Edge(inner[0], col[0]))  # the values come from a confined query
        sub = link.subselect
        plain = not (sub.limitCount or sub.limitOffset or sub.groupClause or sub.havingClause
                     or sub.windowClause or sub.distinctClause or sub.larg or sub.rarg)
        if plain:  # only the inner rows with the outer row's key can match it
            self.edges.append(Edge(col[0], inner[0]))
        return True

    # ---- expressions -----------------------------------------------------------------------

    def expressions(self, node: Any, scope: _Scope) -> None:
        """Walk expressions for what they hold: sub-queries (each a scope of its own), calls
        of sharded functions, and any sharded table named outside a FROM (unconfined)."""
        stack = [node]
        while stack:
            item = stack.pop()
            if isinstance(item, ast.SubLink):
                if item.testexpr is not None:
                    stack.append(item.testexpr)
                self.statement(item.subselect, scope)
                continue
            if isinstance(item, _STATEMENTS):
                self.statement(item, scope)
                continue
            if isinstance(item, ast.RangeVar):
                if self._sharded(item, scope):
                    self._new_ref(Ref(item.relname))
                continue
            if isinstance(item, ast.FuncCall):
                found = self._sharded_function(item)
                if found is not None:
                    self.function(*found, item, scope)
            stack.extend(children(item, _SKIPPED_SLOTS))

    def function(self, name: str, positions: tuple[int, ...], call: Any,
                 scope: _Scope) -> None:
        """A sharded function's call: confined by the arguments router.toml says carry a
        shard (an id or a region name; positional only), or by a confined reference's key
        column passed there. Its other arguments (a search text that reads "asia") name
        nothing."""
        ref = self._new_ref(Ref(f"{name}()", function=True))
        values: list[KeyRef] = []
        for number, arg in enumerate(call.args or (), 1):
            if number not in positions or isinstance(arg, ast.NamedArgExpr):
                continue
            param = param_number(arg)
            value = None if param is not None else const_value(arg)
            if param is not None or isinstance(value, str):
                values.append(KeyRef(KeyKind.ID, f"argument {number}", f"{name}()",
                                     param=param, value=value))
                continue
            col = self.column(arg, scope)
            if col is not None:
                self.edges.append(Edge(col[0], ref))
        if values:
            self.pins.append(Pin(ref, tuple(values), loose=True))


def confinement(stmt: Any, tables: Mapping[str, TableConfig],
                sharded_function: ShardedFunction) -> Confinement:
    """The references, pins, joins and written rows of one parsed statement.
    `sharded_function(call)` names a FuncCall declared as reading or writing sharded data,
    with the (1-based) positions of its arguments that carry a shard."""
    analyzer = _Analyzer(tables, sharded_function)
    analyzer.statement(stmt, None)
    return analyzer.result()
