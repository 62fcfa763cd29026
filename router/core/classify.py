# pglast's AST types mark every field Optional, though the parser fills the ones read here;
# checking each would bury the logic, so these error codes are off for this module only.
# mypy: disable-error-code="arg-type,index,assignment,union-attr,misc,attr-defined"
"""What a SQL statement is, decided by PostgreSQL's own parser (pglast), once per SQL text.

`Classifier.analyze(sql)` returns an `Analysis`: read-only or write, the tables it touches, where
its shard key may be found (a column = $n or = constant, an INSERT's VALUES, a function argument),
and whether it changes session state (so its pooled connection is closed, not reused).
Results are kept in a bounded LRU keyed by the SQL text, so parsing stays off the hot path.

`Analyzer` is pure; `router/engine/classifier.py` keeps the LRU of results and parses texts
longer than `INLINE_PARSE_MAX` characters on a thread of its own (a deeply nested text overflows
the event loop thread's stack inside pglast). Texts over `router.max_sql_bytes` are refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, parse_sql
from pglast.parser import ParseError

from router.config import TableConfig, parse_function_spec
from router.core.confinement import Confinement, KeyKind, KeyRef, confinement
from router.core.errors import SqlParseError, UnsupportedStatementError
from router.core.reference import is_reference_table
from router.core.sqltree import const_value, walk

__all__ = [
    "BUILTIN_PRIMARY_ONLY",
    "INLINE_PARSE_MAX",
    "Analysis",
    "Analyzer",
    "KeyKind",
    "KeyRef",
    "SqlParseError",
    "StatementKind",
    "UnsupportedStatementError",
]


# Up to this many characters a text is parsed on the calling thread: at most ~4,000 levels of
# nesting, far below what overflows a main thread's 8 MiB stack (~25,000 measured). Longer
# ones go to the parser thread (router/engine/parser_thread.py).
INLINE_PARSE_MAX = 8192


class StatementKind(enum.Enum):
    READ = "read"
    WRITE = "write"


_NOTHING = Confinement()


@dataclass(frozen=True, slots=True)
class Analysis:
    kind: StatementKind
    command: str  # SELECT, INSERT, UPDATE, DELETE, MERGE, UTILITY ...
    tables: tuple[str, ...]
    changes_session_state: bool
    param_count: int
    # Which sharded tables (and sharded functions) it touches and what confines each to a
    # shard: routing.py binds the parameters to it (confinement.py).
    confinement: Confinement = _NOTHING
    # The reference tables it writes (INSERT/UPDATE/DELETE/MERGE/TRUNCATE anywhere in it):
    # such a write goes to every shard or nowhere (router/core/reference.py).
    reference_writes: tuple[str, ...] = ()
    # What a cross-shard read of it needs, made when first asked (router/engine/scatter.py), so it
    # lives and is evicted with the analysis.
    scatter: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def keys(self) -> tuple[KeyRef, ...]:
        """Every shard-key value the statement compares a key column with, or writes."""
        conf = self.confinement
        pinned = (v for pin in conf.pins if not pin.loose for v in pin.values)
        written = (k.key for row in conf.rows for k in row if k.key is not None)
        return (*pinned, *written)

    @property
    def assigned_keys(self) -> tuple[KeyRef, ...]:
        return self.confinement.assigned

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
        # The session's random() sequence: the next client's random() would be predictable.
        "setseed",
    }
)


# Built-in functions PostgreSQL marks stable or immutable that still cannot run on a standby:
# they take a transaction id, or name a WAL file of the server's own timeline ("recovery is
# in progress"). Whatever the catalogue says, they make a statement a write (tested against a
# real standby: tests/integration/test_builtin_reads.py).
BUILTIN_PRIMARY_ONLY = frozenset(
    {"txid_current", "pg_current_xact_id", "pg_walfile_name", "pg_walfile_name_offset"})


# Functions that read what an earlier statement of the same session left behind. A backend
# connection serves many clients, one after another, so their answer would be another
# client's (currval after that client's nextval, or after an invoice's trigger): refused.
_SESSION_READS = frozenset({"currval", "lastval"})

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
    return fname == "set_config" and len(args) == 3 and const_value(args[2]) is True


class Analyzer:
    """Analyzes SQL text against the configured sharded tables: pure, no cache, no threads
    (router/engine/classifier.py keeps the cache and parses long texts on the parser thread)."""

    def __init__(
        self,
        tables: Mapping[str, TableConfig],
        read_only_functions: tuple[str, ...] | frozenset[str],
        max_sql_bytes: int = 1024 * 1024,
        sharded_functions: tuple[str, ...] | frozenset[str] = (),
        builtin_reads: frozenset[str] = frozenset(),
    ) -> None:
        self._max_sql_bytes = max_sql_bytes
        self._tables = dict(tables)
        # Unquoted names, as PostgreSQL folds them: "count", or "myschema.get_course".
        self._read_only_functions = frozenset(f.lower() for f in read_only_functions)
        # pg_catalog's functions none of whose forms is volatile, as the shards' own catalogue
        # says (router/backend/catalog.py), less BUILTIN_PRIMARY_ONLY: reads, as in pgpool-II.
        self._builtin_reads = builtin_reads - BUILTIN_PRIMARY_ONLY
        # name -> the positions of its arguments that carry a shard (router.toml)
        self._sharded_functions = dict(parse_function_spec(f) for f in sharded_functions)

    def learn_builtin_reads(self, names: frozenset[str]) -> None:
        self._builtin_reads = names - BUILTIN_PRIMARY_ONLY

    def analyze(self, sql: str) -> Analysis:
        """The analysis of one text. A text over `INLINE_PARSE_MAX` characters may nest deeper
        than the calling thread's stack holds: give those to a thread with a large stack."""
        return self._analyze(sql)

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
                                "54000")
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
        if isinstance(stmt, ast.CopyStmt):  # COPY ... PROGRAM runs on the server, unseen
            raise UnsupportedStatementError(
                "COPY is not supported through the router: use INSERT (or executemany)")
        if isinstance(stmt, ast.TransactionStmt):
            raise UnsupportedStatementError(
                "transaction control (BEGIN/COMMIT/ROLLBACK) must use the protocol's "
                "begin/commit/rollback requests, which pin a connection"
            )

        tables: list[str] = []
        written: list[Any] = []  # the RangeVars it writes
        funcs: list[Any] = []
        params: set[int] = set()
        write = False
        settings_view = False
        session = isinstance(stmt, _SESSION_STMTS) and not _transaction_scoped(stmt)
        node: Any
        for node in walk(stmt):
            if isinstance(node, ast.RangeVar):
                name = node.relname
                tables.append(name)
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
                written.append(node.relation)
            elif isinstance(node, ast.TruncateStmt):
                written.extend(node.relations or ())
            elif isinstance(node, ast.SelectStmt) and (node.lockingClause or node.intoClause):
                write = True
            if not session and _names_pg_temp(node):
                session = True  # CREATE FUNCTION pg_temp.f, CREATE TYPE pg_temp.t, ...

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
            if builtin and fname in _SESSION_READS:
                raise UnsupportedStatementError(
                    f"{fname}() reads the backend session's last sequence value, which through "
                    "the router may be another client's (connections are shared): use the "
                    "value nextval() or INSERT ... RETURNING gave you")
            qualified = ".".join(names)
            if not ((builtin and (fname in self._read_only_functions
                                  or fname in self._builtin_reads))
                    or qualified in self._read_only_functions):
                write = True

        return Analysis(
            kind=StatementKind.WRITE if write else StatementKind.READ,
            command=command,
            tables=tuple(dict.fromkeys(tables)),
            changes_session_state=session,
            param_count=max(params, default=0),
            confinement=self._confinement(stmt),
            reference_writes=tuple(dict.fromkeys(
                rv.relname for rv in written
                if is_reference_table(rv.relname, rv.schemaname, self._tables))),
        )

    def _confinement(self, stmt: Any) -> Confinement:
        try:
            return confinement(stmt, self._tables, self._sharded_function)
        except RecursionError:  # hundreds of nested subqueries: PostgreSQL's max_stack_depth
            raise SqlParseError("the statement is nested too deeply for the router to check "
                                "which shards it touches", None, "54001") from None

    def _sharded_function(self, call: Any) -> tuple[str, tuple[int, ...]] | None:
        """The name of a call's function, and its arguments that carry a shard, when
        router.sharded_functions declares it. Matched by its bare name in any schema too: a
        same-named function elsewhere is taken as sharded, which can only make the router
        refuse, never answer from the wrong shard."""
        names = [n.sval for n in call.funcname]
        qualified = ".".join(names)
        found = self._sharded_functions.get(qualified)
        if found is None:
            found = self._sharded_functions.get(names[-1])
        return None if found is None else (qualified, found)


def _names_pg_temp(node: Any) -> bool:
    """A qualified name in the pg_temp schema (a function, type, domain, operator ...), which is
    searched before the others: another client would resolve the bare name to this object."""
    for slot in node.__slots__:
        names = getattr(node, slot, None)
        if not isinstance(names, (list, tuple)):
            continue
        if isinstance(names[0], (list, tuple)) and names[0]:  # DROP ... objects: lists of names
            names = names[0]
        if (len(names) >= 2 and isinstance(names[0], ast.String)
                and str(names[0].sval).lower().startswith("pg_temp")):
            return True
    return False
