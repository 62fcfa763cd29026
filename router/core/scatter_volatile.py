# pglast's AST types mark every field Optional, though the parser fills the ones read here.
# mypy: disable-error-code="arg-type,index,union-attr,attr-defined"
"""Cross-shard reads, values each shard would compute for itself (pure): volatile and
per-node functions, the statement's own time (now(), CURRENT_DATE, 'today'), and text read
as a date or time while the statement runs, where PostgreSQL's input functions take 'now',
'today', 'tomorrow' and 'yesterday' as that shard's own clock. Every shard's statement starts
at its own instant, so an answer built from several would be none that one database gives."""

from __future__ import annotations

import re
from typing import Any

from pglast import ast
from pglast.enums import A_Expr_Kind

from router.core.scatter_plan import Refusal
from router.core.scatter_tree import func_name, refuse, walk

__all__ = ["check_per_shard_values"]

# Functions whose value differs between shards, or from call to call.
_VOLATILE = frozenset({
    "random", "random_normal", "setseed", "clock_timestamp", "timeofday", "nextval", "currval",
    "lastval", "setval", "gen_random_uuid", "uuidv4", "uuidv7", "uuid_generate_v4",
    "georoute_id", "georoute_region", "txid_current", "pg_current_xact_id", "pg_backend_pid",
    "inet_server_port", "inet_server_addr", "pg_is_in_recovery", "pg_last_wal_replay_lsn",
    "pg_current_wal_lsn", "pg_postmaster_start_time", "pg_sleep",
    # One value per statement, or per session or node: each shard's statement has its own.
    "now", "statement_timestamp", "transaction_timestamp", "current_setting",
    "current_database", "current_schema", "current_schemas", "current_query", "version",
    "inet_client_addr", "inet_client_port", "pg_conf_load_time", "txid_current_snapshot",
    "pg_current_snapshot", "pg_my_temp_schema", "pg_trigger_depth", "pg_backend_memory_contexts",
    "txid_current_if_assigned", "txid_status", "pg_xact_status", "mxid_age",
    "pg_xact_commit_timestamp", "pg_blocking_pids", "pg_safe_snapshot_blocking_pids",
    "pg_notification_queue_usage", "pg_export_snapshot", "pg_jit_available",
    "pg_is_wal_replay_paused", "pg_get_wal_replay_pause_state",
    # Sizes and files of one node's own storage.
    "pg_database_size", "pg_relation_size", "pg_table_size", "pg_indexes_size",
    "pg_total_relation_size", "pg_tablespace_size", "pg_relation_filenode",
    "pg_relation_filepath",
})
# Families of per-node functions: statistics, files, control data, the WAL position.
_VOLATILE_PREFIXES = ("pg_stat_", "pg_ls_", "pg_read_", "pg_control_", "pg_last_",
                      "pg_current_")
# Text that the input functions of dates and times read as the statement's own time: alone,
# or with other fields ('today 10:00', 'yesterday allballs', '{now}', '[now,infinity)').
_TIME_WORDS = frozenset({"now", "today", "tomorrow", "yesterday"})
_WORD = re.compile(r"[a-z]+")
# Types whose input function reads those words.
_TEMPORAL = frozenset({
    "timestamp", "timestamptz", "date", "time", "timetz", "tsrange", "tstzrange", "daterange",
    "tsmultirange", "tstzmultirange", "datemultirange",
})
# Functions whose result is a date or time computed from their arguments, never from text
# read while the statement runs (given arguments of that kind).
_TEMPORAL_RESULTS = frozenset({
    "date_trunc", "date_bin", "make_date", "make_time", "make_timestamp", "make_timestamptz",
    "to_timestamp", "to_date", "timezone", "date_add", "date_subtract", "coalesce", "nullif",
    "greatest", "least",
}) | _TEMPORAL
# Functions that read text (or JSON) into values of any type, dates and times included.
_TEXT_INPUT = frozenset({
    "json_populate_record", "json_populate_recordset", "jsonb_populate_record",
    "jsonb_populate_recordset", "jsonb_populate_record_valid", "json_to_record",
    "json_to_recordset", "jsonb_to_record", "jsonb_to_recordset", "timestamptz_in",
    "timestamp_in", "date_in", "time_in", "timetz_in", "range_in", "multirange_in", "array_in",
    "record_in",
})
_PATTERN_OPERATORS = frozenset({"~", "~*", "!~", "!~*", "~~", "~~*", "!~~", "!~~*"})
_PATTERN_KINDS = frozenset({A_Expr_Kind.AEXPR_LIKE, A_Expr_Kind.AEXPR_ILIKE,
                            A_Expr_Kind.AEXPR_SIMILAR})
_ARITHMETIC = frozenset({"+", "-"})

_OWN_TIME = "its value is the statement's or the session's own, different on each shard"
_READ_AS_TIME = (
    "text read as a date or time while the statement runs: PostgreSQL reads 'now', 'today', "
    "'tomorrow' and 'yesterday' in it as each shard's own clock. Pass the value as a "
    "date/time parameter, or cast a constant")
_TIME_WORD_TEXT = (
    "a date or time read from this text is each shard's own clock (the router does not know "
    "the type a literal takes, so any text with 'now', 'today', 'tomorrow' or 'yesterday' in "
    "it as a word is refused; pass it as a parameter)")
_TEXT_AS_VALUES = (
    "it reads text (or JSON) as values of any type while the statement runs, dates and times "
    "too, where 'now', 'today', 'tomorrow' and 'yesterday' are each shard's own clock")


def check_per_shard_values(stmt: Any) -> None:
    """Refuse the first value in `stmt` (subqueries and CTEs included) that each shard would
    compute for itself."""
    patterns = {id(node.rexpr) for node in walk(stmt, into_queries=True)
                if isinstance(node, ast.A_Expr) and _is_pattern(node)}
    for node in walk(stmt, into_queries=True):
        if isinstance(node, ast.FuncCall):
            _check_call(node)
        elif isinstance(node, ast.SQLValueFunction):
            raise refuse(Refusal.VOLATILE, node, _OWN_TIME)
        elif isinstance(node, ast.A_Const) and id(node) not in patterns and _has_time_word(node):
            raise refuse(Refusal.VOLATILE, node, _TIME_WORD_TEXT)
        elif isinstance(node, ast.TypeCast) and _type_name(node.typeName) in _TEMPORAL:
            if not _fixed_time(node.arg):
                raise refuse(Refusal.VOLATILE, node, _READ_AS_TIME)


def _check_call(node: Any) -> None:
    name = func_name(node)
    if name in _VOLATILE or name.startswith(_VOLATILE_PREFIXES):
        raise refuse(Refusal.VOLATILE, node, "its value differs between shards or between calls")
    if name == "age" and len(node.args or ()) == 1:
        raise refuse(Refusal.VOLATILE, node, "age() of one value is counted from CURRENT_DATE "
                                             "(or the current transaction id), each shard's own")
    if name in _TEXT_INPUT:
        raise refuse(Refusal.VOLATILE, node, _TEXT_AS_VALUES)
    if name in _TEMPORAL and len(node.args or ()) == 1 and not _fixed_time(node.args[0]):
        raise refuse(Refusal.VOLATILE, node, _READ_AS_TIME)  # a function-style cast


def _fixed_time(node: Any) -> bool:
    """Whether `node`, cast to a date or time, cannot be text read while the statement runs:
    a constant (its words are checked on their own), a parameter (typed by the cast, so sent
    as a date or time), a column, a date or time computed from those."""
    if isinstance(node, (ast.A_Const, ast.ParamRef, ast.ColumnRef)):
        return True
    if isinstance(node, ast.TypeCast):
        if _type_name(node.typeName) in _TEMPORAL or _type_name(node.typeName) == "interval":
            return _fixed_time(node.arg)
        return isinstance(node.arg, ast.A_Const)  # '...'::text: the constant is checked
    if isinstance(node, ast.FuncCall):
        return func_name(node) in _TEMPORAL_RESULTS and all(
            _fixed_time(arg) for arg in node.args or ())
    if isinstance(node, (ast.CoalesceExpr, ast.MinMaxExpr)):
        return all(_fixed_time(arg) for arg in node.args)
    if isinstance(node, ast.CaseExpr):
        return all(_fixed_time(w.result) for w in node.args) and (
            node.defresult is None or _fixed_time(node.defresult))
    if isinstance(node, ast.A_Expr) and node.kind == A_Expr_Kind.AEXPR_OP:
        return (_operator(node) in _ARITHMETIC
                and all(_fixed_time(x) for x in (node.lexpr, node.rexpr) if x is not None))
    return False


def _is_pattern(node: Any) -> bool:
    """A LIKE, ILIKE, SIMILAR TO or regular expression match: text on both sides."""
    return node.kind in _PATTERN_KINDS or (
        node.kind == A_Expr_Kind.AEXPR_OP and _operator(node) in _PATTERN_OPERATORS)


def _operator(node: Any) -> str:
    return str(node.name[-1].sval)


def _type_name(type_name: Any) -> str:
    return str(type_name.names[-1].sval).lower()


def _has_time_word(node: Any) -> bool:
    """A string constant with one of the time words in it, as a word: the router does not
    know the type a bare literal takes, nor which fields a date or time type reads."""
    val = node.val
    if not isinstance(val, ast.String):
        return False
    return any(word in _TIME_WORDS for word in _WORD.findall(val.sval.lower()))

