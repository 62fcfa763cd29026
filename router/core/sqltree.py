# pglast's AST types mark every field Optional, though the parser fills the ones read here.
# mypy: disable-error-code="union-attr,attr-defined,arg-type,misc"
"""Reading PostgreSQL's parse tree (pglast): walking it, and the values, parameters and names
its nodes hold. Pure; shared by the classifier, the confinement rule and the scatter rewrite."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Any

from pglast import ast
from pglast.enums import BoolExprType

__all__ = [
    "children", "column_name", "conjuncts", "const_value", "is_null", "param_number", "uncast",
    "walk",
]


def children(node: Any, skipped: frozenset[str] = frozenset()) -> Iterator[Any]:
    """The child nodes and lists of a parse-tree node (slots named in `skipped` left out)."""
    if isinstance(node, ast.Node):
        for slot in node.__slots__:
            if slot in skipped:
                continue
            value = getattr(node, slot, None)
            if value is not None and not isinstance(value, (str, int, float, bool, enum.Enum)):
                yield value
    elif isinstance(node, (tuple, list)):
        yield from node


def conjuncts(expr: Any) -> Iterator[Any]:
    """The terms of a top-level AND (an OR or NOT is one opaque term). Iterative: a text of a
    thousand nested ANDs must not exhaust Python's stack."""
    stack = [expr]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.BoolExpr) and item.boolop == BoolExprType.AND_EXPR:
            stack.extend(reversed(item.args))
        elif item is not None:
            yield item


def uncast(node: Any) -> Any:
    """A value under casts that keep it whole ('...'::uuid, $1::text); a cast with a type
    modifier (::varchar(8)) may cut it, so it is not looked through."""
    while isinstance(node, ast.TypeCast):
        if node.typeName is not None and node.typeName.typmods:
            return node
        node = node.arg
    return node


def const_value(node: Any) -> Any:
    node = uncast(node)
    if isinstance(node, ast.A_Const) and not node.isnull:
        val = node.val
        for attr in ("sval", "ival", "fval", "boolval"):
            if hasattr(val, attr):
                return getattr(val, attr)
    return None


def param_number(node: Any) -> int | None:
    node = uncast(node)
    if isinstance(node, ast.ParamRef):
        return int(node.number)
    return None


def column_name(node: Any) -> tuple[str | None, str] | None:
    """(qualifier or None, column) of a ColumnRef."""
    if not isinstance(node, ast.ColumnRef) or not node.fields:
        return None
    names: list[str] = [f.sval for f in node.fields if isinstance(f, ast.String)]
    if not names or len(names) != len(node.fields):
        return None
    return (names[-2] if len(names) > 1 else None, names[-1])


def is_null(node: Any) -> bool:
    inner = uncast(node)
    return isinstance(inner, ast.A_Const) and bool(inner.isnull)


def walk(node: Any, *, into_queries: bool = True) -> Iterator[Any]:
    """Every node under `node` (itself included); sub-queries only with `into_queries`.
    Iterative: deep trees must not exhaust Python's stack."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.Node):
            yield item
            if not into_queries and isinstance(item, (ast.SubLink, ast.SelectStmt)):
                continue
        stack.extend(children(item))
