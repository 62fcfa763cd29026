# pglast's AST nodes declare their fields in __slots__, which its stubs do not show.
# mypy: disable-error-code="attr-defined"
"""Cross-shard reads: reading a SELECT's pglast tree (its nodes, aggregates and SQL text) for
the rewrite (router/core/scatter_rewrite.py) and its checks (router/core/scatter_checks.py)."""

from __future__ import annotations

from typing import Any

from pglast import ast
from pglast.stream import RawStream

from router.core.scatter_plan import Combine, Refusal, ScatterRefused
from router.core.sqltree import walk

__all__ = [
    "AGGREGATES",
    "func_name",
    "has_aggregate",
    "is_aggregate",
    "refuse",
    "sql_text",
    "walk",
]


# Aggregates the merge combines from per-shard parts.
AGGREGATES = {
    "count": Combine.COUNT, "sum": Combine.SUM, "min": Combine.MIN, "max": Combine.MAX,
    "avg": Combine.AVG, "bool_and": Combine.AND, "every": Combine.AND, "bool_or": Combine.OR,
    "array_agg": Combine.ARRAY, "string_agg": Combine.STRING,
}
# PostgreSQL's other aggregates: refused, since their parts do not combine (or not exactly).
OTHER_AGGREGATES = frozenset({
    "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "json_objectagg", "json_arrayagg", "xmlagg", "stddev", "stddev_pop", "stddev_samp",
    "variance", "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx",
    "regr_avgy", "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx",
    "regr_sxy", "regr_syy", "percentile_cont", "percentile_disc", "mode", "bit_and", "bit_or",
    "bit_xor", "any_value", "range_agg", "range_intersect_agg", "grouping",
})


def sql_text(node: Any) -> str:
    return str(RawStream()(node))


def refuse(reason: Refusal, node: Any, why: str) -> ScatterRefused:
    part = node if isinstance(node, str) else sql_text(node)
    return ScatterRefused(reason, part, why)


def func_name(call: Any) -> str:
    names = [n.sval for n in call.funcname]
    if len(names) > 1 and names[-2] != "pg_catalog":
        return ".".join(names)
    return names[-1]


def is_aggregate(node: Any) -> bool:
    if not isinstance(node, ast.FuncCall) or node.over is not None:
        return False
    name = func_name(node)
    return name in AGGREGATES or name in OTHER_AGGREGATES or bool(node.agg_within_group)


def has_aggregate(node: Any) -> bool:
    return any(is_aggregate(n) for n in walk(node, into_queries=False))
