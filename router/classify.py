# pglast's AST types mark every field Optional, though the parser fills the ones read here;
# checking each would bury the logic, so these error codes are off for this module only.
# mypy: disable-error-code="arg-type,index,assignment,union-attr,misc,attr-defined"
"""What a SQL statement is, decided by PostgreSQL's own parser (pglast), once per SQL text.

`Classifier.analyze(sql)` returns an `Analysis`: read-only or write, the tables it touches, where
its shard key may be found (a column = $n or = constant, an INSERT's VALUES, a function argument),
and whether it changes session state (so its pooled connection is closed, not reused).
Results are kept in a bounded LRU keyed by the SQL text, so parsing stays off the hot path.

Texts longer than `INLINE_PARSE_MAX` characters are parsed on a thread of their own
(router/parser_thread.py, `analyze_async`); texts over `router.max_sql_bytes` are refused.
"""

from __future__ import annotations

import asyncio
import enum
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pglast import ast, parse_sql
from pglast.enums import A_Expr_Kind, BoolExprType
from pglast.parser import ParseError

from router.config import TableConfig
from router.parser_thread import INLINE_PARSE_MAX, on_parser_thread

__all__ = [
    "INLINE_PARSE_MAX",
    "Analysis",
    "Classifier",
    "KeyKind",
    "KeyRef",
    "SqlParseError",
    "StatementKind",
    "UnsupportedStatementError",
]


class SqlParseError(Exception):
    """PostgreSQL's parser rejected the text (or it was too long to parse: SQLSTATE 54000,
    program_limit_exceeded). `position` is a 0-based character offset."""

    def __init__(self, message: str, position: int | None, sqlstate: str = "42601") -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.sqlstate = sqlstate


class UnsupportedStatementError(Exception):
    """A statement the router will not run through a plain query (e.g. BEGIN, several at once)."""


class StatementKind(enum.Enum):
    READ = "read"
    WRITE = "write"


class KeyKind(enum.Enum):
    REGION = "region"  # the value is a shard's name
    ID = "id"  # the value is a shard-carrying id


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A place a shard key may be read from: either bound parameter $param or a constant."""

    kind: KeyKind
    column: str
    table: str
    param: int | None = None  # 1-based parameter number
    value: Any = None


@dataclass(frozen=True, slots=True)
class Analysis:
    kind: StatementKind
    command: str  # SELECT, INSERT, UPDATE, DELETE, UTILITY ...
    tables: tuple[str, ...]
    keys: tuple[KeyRef, ...]
    # Function-call arguments: parameters and constants that may carry an id or a region
    # (the fallback for `SELECT enroll($1, $2)`-style calls that name no table).
    arg_params: tuple[int, ...]
    arg_values: tuple[Any, ...]
    changes_session_state: bool
    param_count: int
    # Any other `column = $n` / `column = 'literal'` and INSERT values of *_id columns: a value
    # there that is a georoute id routes even a table that is not configured ("a row id").
    id_params: tuple[int, ...] = ()
    id_values: tuple[Any, ...] = ()
    # Shard-key columns an UPDATE (or an upsert's DO UPDATE) sets: the new value must stay on
    # the row's shard. A KeyRef with neither param nor value was set to an expression.
    assigned_keys: tuple[KeyRef, ...] = ()
    # Tables the statement writes (INSERT/UPDATE/DELETE/MERGE targets, in CTEs too).
    written_tables: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        return self.kind is StatementKind.READ


_WRITE_STMTS = {
    ast.InsertStmt: "INSERT",
    ast.UpdateStmt: "UPDATE",
    ast.DeleteStmt: "DELETE",
    ast.MergeStmt: "MERGE",
}
_SESSION_STMTS = (
    ast.VariableSetStmt,
    ast.ListenStmt,
    ast.UnlistenStmt,
    ast.PrepareStmt,
    ast.DeallocateStmt,
    ast.DeclareCursorStmt,
    ast.DiscardStmt,
    ast.LoadStmt,
    # Procedural code can change anything, set_config(..., false) included.
    ast.DoStmt,
    ast.CallStmt,
)
_SESSION_FUNCS = frozenset(
    {
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "set_config",
        "pg_advisory_unlock",
        "pg_advisory_unlock_all",
    }
)


_CURSOR_OPT_HOLD = 0x0020  # PostgreSQL's parsenodes.h


def _transaction_scoped(stmt: Any) -> bool:
    """SET LOCAL and a cursor without HOLD end with their transaction: no session change."""
    if isinstance(stmt, ast.VariableSetStmt):
        return bool(stmt.is_local)
    if isinstance(stmt, ast.DeclareCursorStmt):
        return not (stmt.options or 0) & _CURSOR_OPT_HOLD
    return False


def _local_set_config(fname: str, func: Any) -> bool:
    """set_config(name, value, true): local to the transaction."""
    args = func.args or ()
    return fname == "set_config" and len(args) == 3 and _const_value(args[2]) is True


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.Node):
        for slot in node.__slots__:
            value = getattr(node, slot, None)
            if value is not None and not isinstance(value, (str, int, float, bool, enum.Enum)):
                yield value
    elif isinstance(node, (tuple, list)):
        yield from node


def _walk(node: Any) -> Iterator[Any]:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
        stack.extend(_children(item))


def _const_value(node: Any) -> Any:
    if isinstance(node, ast.TypeCast):  # '...'::uuid
        return _const_value(node.arg)
    if isinstance(node, ast.A_Const) and not node.isnull:
        val = node.val
        for attr in ("sval", "ival", "fval", "boolval"):
            if hasattr(val, attr):
                return getattr(val, attr)
    return None


def _param_number(node: Any) -> int | None:
    if isinstance(node, ast.TypeCast):
        return _param_number(node.arg)
    if isinstance(node, ast.ParamRef):
        return int(node.number)
    return None


def _collect(expr: Any, params: list[int], values: list[Any]) -> None:
    """Note where a value that may carry a shard comes from: $n, or a text constant."""
    param = _param_number(expr)
    if param is not None:
        params.append(param)
        return
    value = _const_value(expr)
    if isinstance(value, str):
        values.append(value)


def _column_name(node: Any) -> tuple[str | None, str] | None:
    """(qualifier or None, column) of a ColumnRef."""
    if not isinstance(node, ast.ColumnRef) or not node.fields:
        return None
    names: list[str] = [f.sval for f in node.fields if isinstance(f, ast.String)]
    if not names or len(names) != len(node.fields):
        return None
    return (names[-2] if len(names) > 1 else None, names[-1])


class Classifier:
    """Analyzes SQL text against the configured sharded tables, with an LRU of results."""

    def __init__(
        self,
        tables: Mapping[str, TableConfig],
        read_only_functions: tuple[str, ...] | frozenset[str],
        cache_size: int = 4096,
        max_sql_bytes: int = 1024 * 1024,
    ) -> None:
        self._max_sql_bytes = max_sql_bytes
        self._tables = dict(tables)
        # Unquoted names, as PostgreSQL folds them: "count", or "myschema.get_course".
        self._read_only_functions = frozenset(f.lower() for f in read_only_functions)
        self._cache: OrderedDict[str, Analysis] = OrderedDict()
        self._cache_size = cache_size
        self.hits = 0
        self.misses = 0

    def analyze(self, sql: str) -> Analysis:
        cache = self._cache
        found = cache.get(sql)
        if found is not None:
            self.hits += 1
            cache.move_to_end(sql)
            return found
        self.misses += 1
        if len(sql) <= INLINE_PARSE_MAX:
            result = self._analyze(sql)
        else:  # normally parsed ahead by analyze_async; this waits for the parser thread
            result = on_parser_thread(self._analyze, sql).result()
        return self._remember(sql, result)

    async def analyze_async(self, sql: str) -> Analysis:
        """`analyze`, with a long text parsed on the parser thread while the loop runs on."""
        found = self.cached(sql)
        if found is not None or len(sql) <= INLINE_PARSE_MAX:
            return found or self.analyze(sql)
        self.misses += 1
        job = on_parser_thread(self._analyze, sql)
        return self._remember(sql, await asyncio.wrap_future(job))

    def cached(self, sql: str) -> Analysis | None:
        """The analysis of `sql` if it is at hand (nothing is parsed)."""
        return self._cache.get(sql)

    def _remember(self, sql: str, result: Analysis) -> Analysis:
        cache = self._cache
        cache[sql] = result
        cache.move_to_end(sql)
        if len(cache) > self._cache_size:
            cache.popitem(last=False)
        return result

    # ---- the analysis proper ---------------------------------------------------------------

    def _analyze(self, sql: str) -> Analysis:
        limit = self._max_sql_bytes
        if len(sql) > limit or (
            len(sql) * 4 > limit and len(sql.encode(errors="surrogatepass")) > limit
        ):
            # The position: the first character past the limit (in UTF-8 bytes).
            within = sql.encode(errors="surrogatepass")[:limit].decode(errors="ignore")
            raise SqlParseError(f"the statement's text is over router.max_sql_bytes ({limit} "
                                "bytes); send large data as parameters", len(within),
                                "54000")  # fmt: skip
        try:
            raw = parse_sql(sql)
        except ParseError as exc:
            args: tuple[Any, ...] = exc.args
            position = args[1] if len(args) > 1 and isinstance(args[1], int) else None
            raise SqlParseError(str(exc.args[0]) if exc.args else str(exc), position) from exc
        if len(raw) != 1:
            raise UnsupportedStatementError(
                f"expected exactly one statement, got {len(raw)}; send them as a batch"
            )
        stmt: Any = raw[0].stmt
        if isinstance(stmt, ast.TransactionStmt):
            raise UnsupportedStatementError(
                "transaction control (BEGIN/COMMIT/ROLLBACK) must use the protocol's "
                "begin/commit/rollback requests, which pin a connection"
            )

        tables: list[str] = []
        aliases: dict[str, str] = {}
        funcs: list[Any] = []
        params: set[int] = set()
        write = False
        written: list[str] = []
        settings_view = False
        session = isinstance(stmt, _SESSION_STMTS) and not _transaction_scoped(stmt)
        node: Any
        for node in _walk(stmt):
            if isinstance(node, ast.RangeVar):
                name = node.relname
                tables.append(name)
                if node.alias is not None:
                    aliases[node.alias.aliasname] = name
                # A temporary object, made with TEMP or in pg_temp (which is searched first:
                # a temporary `users` would hide the real one from the next client).
                schema = node.schemaname or ""
                if node.relpersistence == "t" or schema.startswith("pg_temp"):
                    session = True
                if name == "pg_settings" and schema in ("", "pg_catalog"):
                    settings_view = True  # UPDATE pg_settings is a SET
            elif isinstance(node, ast.FuncCall):
                funcs.append(node)
            elif isinstance(node, ast.ParamRef):
                params.add(int(node.number))
            elif type(node) in _WRITE_STMTS:
                write = True
                # An UPDATE/DELETE/MERGE inside a CTE: it must key its own table (routing.py).
                if node is not stmt and node.relation is not None and not isinstance(
                    node, ast.InsertStmt
                ):  # fmt: skip
                    written.append(node.relation.relname)
            elif isinstance(node, ast.SelectStmt) and (node.lockingClause or node.intoClause):
                write = True

        if isinstance(stmt, ast.SelectStmt):
            command = "SELECT"
        elif type(stmt) in _WRITE_STMTS:
            command = _WRITE_STMTS[type(stmt)]
        else:
            command = "UTILITY"
            write = True  # DDL, VACUUM, SET ...: primary only

        if settings_view and type(stmt) in _WRITE_STMTS:
            session = True
        for func in funcs:
            # As PostgreSQL names it: unquoted names come folded to lower case, a quoted
            # "COUNT" is another function; a schema other than pg_catalog is another too.
            names = [n.sval for n in func.funcname]
            fname = names[-1]
            schema = names[-2] if len(names) > 1 else None
            builtin = schema in (None, "pg_catalog")
            if builtin and fname in _SESSION_FUNCS and not _local_set_config(fname, func):
                session = True
            qualified = ".".join(names)
            if not ((builtin and fname in self._read_only_functions)
                    or qualified in self._read_only_functions):  # fmt: skip
                write = True

        keys, id_params, id_values = self._find_keys(stmt, tables, aliases)
        arg_params: list[int] = []
        arg_values: list[Any] = []
        for func in funcs:
            for arg in func.args or ():
                _collect(arg, arg_params, arg_values)

        return Analysis(
            kind=StatementKind.WRITE if write else StatementKind.READ,
            command=command,
            tables=tuple(dict.fromkeys(tables)),
            keys=tuple(keys),
            arg_params=tuple(arg_params),
            arg_values=tuple(arg_values),
            id_params=tuple(id_params),
            id_values=tuple(id_values),
            changes_session_state=session,
            param_count=max(params, default=0),
            assigned_keys=tuple(self._assigned_keys(stmt)),
            written_tables=tuple(dict.fromkeys(written)),
        )

    def _assigned_keys(self, stmt: Any) -> Iterator[KeyRef]:
        """The shard-key columns `UPDATE ... SET` or `ON CONFLICT DO UPDATE SET` assigns."""
        targets: Any = ()
        if isinstance(stmt, ast.UpdateStmt):
            targets = stmt.targetList or ()
        elif isinstance(stmt, ast.InsertStmt) and stmt.onConflictClause is not None:
            targets = stmt.onConflictClause.targetList or ()
        if not targets or stmt.relation is None:
            return
        table = stmt.relation.relname
        alias = stmt.relation.alias.aliasname if stmt.relation.alias is not None else table
        target: Any
        for target in targets:
            kind = self._key_kind(table, target.name)
            if kind is None:
                continue
            val = target.val
            if isinstance(val, ast.MultiAssignRef):  # SET (a, b) = ($1, $2)
                source = val.source
                if not isinstance(source, ast.RowExpr):  # = (SELECT ...): an expression
                    yield KeyRef(kind, target.name, table)
                    continue
                val = source.args[(val.colno or 1) - 1]
            inner = val.arg if isinstance(val, ast.TypeCast) else val
            if isinstance(inner, ast.SetToDefault) or (
                isinstance(inner, ast.A_Const) and inner.isnull
            ):  # fmt: skip
                continue  # DEFAULT is made on this shard; NULL is the column's own business
            name = _column_name(val)
            if name is not None and name[1] == target.name and name[0] in (
                None, "excluded", table, alias,
            ):  # fmt: skip
                continue  # SET region = region, or the upsert's own inserted value
            param = _param_number(val)
            value = None if param is not None else _const_value(val)
            yield KeyRef(kind, target.name, table, param=param, value=value)

    def _key_kind(self, table: str, column: str) -> KeyKind | None:
        cfg = self._tables.get(table)
        if cfg is None:
            return None
        if column == cfg.region_column:
            return KeyKind.REGION
        if column in cfg.id_columns:
            return KeyKind.ID
        return None

    def _ref(
        self, col: Any, other: Any, tables: list[str], aliases: dict[str, str]
    ) -> KeyRef | None:
        name = _column_name(col)
        if name is None:
            return None
        qualifier, column = name
        candidates = [aliases.get(qualifier, qualifier)] if qualifier else tables
        for table in candidates:
            kind = self._key_kind(table, column)
            if kind is None:
                continue
            param = _param_number(other)
            if param is not None:
                return KeyRef(kind, column, table, param=param)
            value = _const_value(other)
            if value is not None:
                return KeyRef(kind, column, table, value=value)
        return None

    def _find_keys(
        self, stmt: Any, tables: list[str], aliases: dict[str, str]
    ) -> tuple[list[KeyRef], list[int], list[Any]]:
        keys: list[KeyRef] = []
        id_params: list[int] = []
        id_values: list[Any] = []

        def loose(expr: Any) -> None:
            _collect(expr, id_params, id_values)

        # INSERT ... (cols) VALUES (one row): the values of shard-key columns.
        if isinstance(stmt, ast.InsertStmt) and stmt.relation is not None:
            select: Any = stmt.selectStmt
            rows = getattr(select, "valuesLists", None) if select is not None else None
            if stmt.cols and rows and len(rows) == 1:
                table = stmt.relation.relname
                target: Any
                for target, expr in zip(stmt.cols, rows[0], strict=False):
                    kind = self._key_kind(table, target.name)
                    if kind is None:
                        if target.name == "id" or target.name.endswith("_id"):
                            loose(expr)
                        continue
                    param = _param_number(expr)
                    value = None if param is not None else _const_value(expr)
                    if param is not None or value is not None:
                        keys.append(KeyRef(kind, target.name, table, param=param, value=value))
        # Equalities in the top-level AND of every WHERE clause (an OR decides nothing).
        for node in _walk(stmt):
            where = getattr(node, "whereClause", None) if isinstance(node, ast.Node) else None
            if where is None:
                continue
            conj: Any
            for conj in _conjuncts(where):
                if not isinstance(conj, ast.A_Expr) or conj.kind != A_Expr_Kind.AEXPR_OP:
                    continue
                if [n.sval for n in conj.name] != ["="]:
                    continue
                ref = self._ref(conj.lexpr, conj.rexpr, tables, aliases) or self._ref(
                    conj.rexpr, conj.lexpr, tables, aliases
                )
                if ref is not None:
                    keys.append(ref)
                elif isinstance(conj.lexpr, ast.ColumnRef):
                    loose(conj.rexpr)
                elif isinstance(conj.rexpr, ast.ColumnRef):
                    loose(conj.lexpr)
        return keys, id_params, id_values


def _conjuncts(expr: Any) -> Iterator[Any]:
    if isinstance(expr, ast.BoolExpr) and expr.boolop == BoolExprType.AND_EXPR:
        for arg in expr.args:
            yield from _conjuncts(arg)
    else:
        yield expr
