# pglast's AST types mark every field Optional, though the parser fills the ones read here.
# mypy: disable-error-code="arg-type,index,assignment,union-attr,misc,attr-defined"
"""Cross-shard reads, what is refused whatever the plan (pure): shapes that are not merged,
values that differ per shard or per statement (scatter_volatile.py), collations, tables
that would meet rows of other shards, aggregates of the outer query inside subqueries, the
merge's own names."""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.enums import LimitOption, SetOperation

from router.core.confinement import Confinement
from router.core.scatter_plan import Refusal, ScatterRefused
from router.core.scatter_tree import func_name, is_aggregate, refuse, walk
from router.core.scatter_volatile import check_per_shard_values

__all__ = [
    "C_COLLATIONS",
    "HIDDEN_PREFIX",
    "check_colocated",
    "check_set_returning",
    "check_shape",
    "check_sublink_aggregates",
]


# Set-returning functions: in a grouped select list they multiply each group's row, which
# the merge would take for a group key.
_SET_RETURNING = frozenset({
    "generate_series", "generate_subscripts", "unnest", "regexp_matches",
    "regexp_split_to_table", "string_to_table", "json_array_elements",
    "json_array_elements_text", "jsonb_array_elements", "jsonb_array_elements_text",
    "json_each", "json_each_text", "jsonb_each", "jsonb_each_text", "json_object_keys",
    "jsonb_object_keys", "json_populate_recordset", "jsonb_populate_recordset",
    "json_to_recordset", "jsonb_to_recordset", "jsonb_path_query", "pg_ls_dir", "ts_stat",
    "ts_debug", "ts_parse", "ts_token_type", "aclexplode", "pg_options_to_table",
    "pg_get_keywords", "pg_listening_channels", "json_table",
})
C_COLLATIONS = frozenset({"c", "posix"})
# The merge's own column names; a user's name like them could be read as one.
HIDDEN_PREFIX = "_georoute_"


def _from_aliases(items: Any) -> set[str]:
    """The names a FROM list's entries are qualified by."""
    names: set[str] = set()
    for item in items or ():
        if isinstance(item, ast.JoinExpr):
            names |= _from_aliases((item.larg, item.rarg))
            if item.alias is not None:
                names.add(item.alias.aliasname)
        elif isinstance(item, ast.RangeVar):
            names.add(item.alias.aliasname if item.alias is not None else item.relname)
        elif getattr(item, "alias", None) is not None:
            names.add(item.alias.aliasname)
    return names


def check_sublink_aggregates(stmt: Any) -> None:
    """An aggregate inside a subquery belongs to the outer query when its arguments name only
    the outer query's columns (`SELECT (SELECT count(u.id)) FROM users u`): then it is an
    aggregate over all rows, which each shard would answer for its own. Accepted only where
    an argument names a column of a table inside the subquery, qualified by its alias, or
    none (count(*))."""
    def visit(select: Any, scope: frozenset[str]) -> None:
        scope = scope | _from_aliases(select.fromClause)
        for slot in select.__slots__:
            for node in walk(getattr(select, slot, None), into_queries=False):
                if isinstance(node, ast.SelectStmt):
                    visit(node, scope)
                elif isinstance(node, ast.SubLink):
                    visit(node.subselect, scope)
                elif is_aggregate(node):
                    refs = [n for n in walk((node.args, node.agg_filter, node.agg_order),
                                             into_queries=False)
                            if isinstance(n, ast.ColumnRef)]
                    if refs and not any(
                            len(r.fields) == 2 and isinstance(r.fields[0], ast.String)
                            and str(r.fields[0].sval) in scope for r in refs):
                        raise refuse(Refusal.AGGREGATE, node,
                                      "an aggregate in a subquery over no column of the "
                                      "subquery's own tables (qualified by their alias) may "
                                      "be the outer query's, over every shard's rows")

    for node in walk([getattr(stmt, slot, None) for slot in stmt.__slots__],
                      into_queries=False):
        if isinstance(node, ast.SubLink):  # (FROM and WITH cannot hold the outer's aggregates)
            visit(node.subselect, frozenset())


def check_colocated(conf: Confinement) -> None:
    """Every sharded table the statement reads must meet only rows of its own shard: all of
    its references reached, by joins on shard keys, from one reference in the outer query's
    FROM. Then each shard's answer is exactly the answer over that shard's rows, and the
    answers only need merging; otherwise rows of different shards would have to meet."""
    if not conf.refs:
        return
    if conf.unanchored:
        raise ScatterRefused(
            Refusal.NOT_COLOCATED, conf.unanchored[0],
            "an outer join keeps the rows of a side with no sharded table (a reference table, "
            "VALUES, a function) that no row matches; each shard would keep those its own rows "
            "do not match, so every shard would add them again. Join them inside one shard's "
            "read, or make it an inner join")
    after: dict[int, set[int]] = {}
    for edge in conf.edges:
        after.setdefault(edge.source, set()).add(edge.target)
    for root in conf.top:
        seen = {root}
        stack = [root]
        while stack:
            for nxt in after.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        if len(seen) == len(conf.refs):
            return
    loose = [ref.table for i, ref in enumerate(conf.refs) if i not in conf.top]
    named = ", ".join(dict.fromkeys(loose or [r.table for r in conf.refs]))
    raise ScatterRefused(
        Refusal.NOT_COLOCATED, named,
        "each shard would see only its own rows of it, but the statement does not join it to "
        "the outer query's table on a shard key (a subquery, CTE or join that is not on "
        "user_id, course_id, region ... would meet rows of other shards)")


def check_shape(stmt: Any) -> None:
    if stmt.op != SetOperation.SETOP_NONE:
        raise refuse(Refusal.SHAPE, stmt.op.name.removeprefix("SETOP_"),
                      "each branch would be answered per shard; send one read per branch")
    if stmt.valuesLists or stmt.intoClause is not None or stmt.lockingClause:
        raise refuse(Refusal.SHAPE, "the statement", "only a plain SELECT is scattered")
    if stmt.limitOption == LimitOption.LIMIT_OPTION_WITH_TIES:
        raise refuse(Refusal.LIMIT, "FETCH ... WITH TIES", "not merged across shards")
    if stmt.distinctClause and stmt.distinctClause != (None,):
        raise refuse(Refusal.DISTINCT, "DISTINCT ON",
                      "which row each shard keeps depends on rows of the other shards")
    check_per_shard_values(stmt)
    for node in walk(stmt, into_queries=True):
        if isinstance(node, ast.CollateClause) and (
                node.collname[-1].sval.lower() not in C_COLLATIONS):
            # Anywhere: the merge compares, groups and takes min/max of text by code point.
            raise refuse(Refusal.ORDER, node, "only the C collation is merged exactly")
        if _names(node).startswith(HIDDEN_PREFIX):
            raise refuse(Refusal.SHAPE, _names(node),
                          "names starting with _georoute_ are the merge's own columns")
        if isinstance(node, ast.RangeTableSample):
            raise refuse(Refusal.SHAPE, "TABLESAMPLE", "each shard would sample on its own")
        if isinstance(node, ast.GroupingSet):
            raise refuse(Refusal.SHAPE, "GROUPING SETS / ROLLUP / CUBE", "not merged")
    for node in walk((stmt.targetList, stmt.sortClause, stmt.havingClause), into_queries=False):
        if isinstance(node, ast.FuncCall) and node.over is not None:
            raise refuse(Refusal.WINDOW, node,
                          "a window function over all rows would need every shard's rows")
    if stmt.windowClause:
        raise refuse(Refusal.WINDOW, "WINDOW", "window functions are not merged")


def _names(node: Any) -> str:
    """The user's name a node carries (an output alias, a column or a FROM alias), else ''."""
    if isinstance(node, ast.ResTarget):
        return node.name or ""
    if isinstance(node, ast.Alias):
        return node.aliasname or ""
    if isinstance(node, ast.ColumnRef):
        return next((str(f.sval) for f in node.fields if isinstance(f, ast.String)
                     and f.sval.startswith(HIDDEN_PREFIX)), "")
    return ""


def check_set_returning(stmt: Any) -> None:
    """A grouped read: refused with a set-returning function in its select list or ORDER BY."""
    for node in walk((stmt.targetList, stmt.sortClause, stmt.havingClause,
                       stmt.groupClause), into_queries=False):
        if isinstance(node, ast.FuncCall) and func_name(node) in _SET_RETURNING:
            raise refuse(Refusal.SHAPE, node, "a set-returning function in a grouped read "
                                               "makes rows of one group the merge cannot tell")
