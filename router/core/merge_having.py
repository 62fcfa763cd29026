"""Cross-shard reads, HAVING: a plan's condition (`Cond`) evaluated on a merged group with
SQL's three-valued logic, comparing values as PostgreSQL would, or refused naming the part."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from protocol.valuetypes import Infinity
from router.core.merge_values import INF, ValueOrder, column_name, comparable, compare
from router.core.scatter_plan import Cond, Operand, Refusal, ScatterRefused

__all__ = ["operand_value", "truth"]


def operand_value(operand: Operand | None, row: Sequence[Any], params: Sequence[Any]) -> Any:
    assert operand is not None
    if operand.column is not None:
        return row[operand.column]
    if operand.param is not None:
        return params[operand.param - 1]
    return operand.value


def truth(cond: Cond, row: Sequence[Any], params: Sequence[Any], orders: Sequence[ValueOrder],
           text_exact: bool, columns: Sequence[str]) -> bool | None:
    """SQL's three-valued truth of a HAVING condition (None: unknown)."""
    op = cond.op
    if op in ("and", "or"):
        results = [truth(c, row, params, orders, text_exact, columns) for c in cond.args]
        if op == "and":
            return False if False in results else (None if None in results else True)
        return True if True in results else (None if None in results else False)
    if op == "not":
        inner = truth(cond.args[0], row, params, orders, text_exact, columns)
        return None if inner is None else not inner
    left = operand_value(cond.left, row, params)
    if op == "isnull":
        return left is None
    if op == "notnull":
        return left is not None
    if op == "value":
        if left is None or isinstance(left, bool):
            return left
        raise ScatterRefused(Refusal.EXPRESSION, "HAVING", "a condition that is not a boolean")
    right = operand_value(cond.right, row, params)
    if left is None or right is None:
        return None
    assert cond.left is not None and cond.right is not None
    named = [side.column for side in (cond.left, cond.right) if side.column is not None]
    part = f"HAVING on {column_name(columns, named[0])}" if named else "HAVING"
    padded = [False, False]
    for i, side in enumerate((cond.left, cond.right)):
        if side.column is not None:
            order = orders[side.column]
            equality = op in ("=", "<>") and order is not ValueOrder.NONE
            if order is not ValueOrder.EXACT and not equality:
                comparable(left, order, text_exact,
                           f"HAVING on {column_name(columns, side.column)}")
            padded[i] = order is ValueOrder.PADDED
    if any(padded):
        # char(n) = char(n) (a constant or parameter is taken as char(n) too) ignores
        # trailing blanks on both sides; against a text column, char(n) becomes text
        # without them, and the text keeps its own.
        strip = [padded[i] or side.column is None
                 for i, side in enumerate((cond.left, cond.right))]
        if isinstance(left, str) and strip[0]:
            left = left.rstrip(" ")
        if isinstance(right, str) and strip[1]:
            right = right.rstrip(" ")
    left, right = _comparable_pair(left, right, cond.left, cond.right, part)
    try:
        c = compare(left, right)
    except TypeError as exc:
        raise ScatterRefused(Refusal.EXPRESSION, part, f"compares a {type(left).__name__} with "
                             f"a {type(right).__name__} in a way the merge cannot judge "
                             f"({exc}); give the constant the column's type") from exc
    return {"=": c == 0, "<>": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


def _comparable_pair(left: Any, right: Any, left_side: Operand, right_side: Operand,
                     part: str) -> tuple[Any, Any]:
    """Two HAVING values as PostgreSQL compares them, or a refusal naming `part`: a float
    against a numeric or integer is compared as float8 (PostgreSQL has no float8 = numeric
    operator; the numeric side is converted), infinities of timestamps and dates against
    any of their type, and otherwise only values of one kind."""
    numbers = (int, float, Decimal)
    if isinstance(left, numbers) and isinstance(right, numbers) and not (
            isinstance(left, bool) or isinstance(right, bool)):
        floats = (isinstance(left, float), isinstance(right, float))
        if floats[0] == floats[1]:
            return left, right
        # A float parameter against a numeric or integer column would be bound as that
        # column's type (by its text, or refused), not compared as float8.
        float_side = left_side if floats[0] else right_side
        if float_side.param is not None and (left_side.column is not None
                                             or right_side.column is not None):
            raise ScatterRefused(Refusal.EXPRESSION, part, "compares a float parameter with "
                                 "an integer or numeric; give the parameter the column's type")
        return (left, _to_float8(right, part)) if floats[0] else (_to_float8(left, part), right)
    infinite = type(left) is Infinity or type(right) is Infinity
    if infinite and all(isinstance(v, (dt.date, Infinity)) for v in (left, right)):
        return left, right
    if type(left) is not type(right):
        raise ScatterRefused(Refusal.EXPRESSION, part,
                             f"compares a {type(left).__name__} with a {type(right).__name__}; "
                             "give the constant the column's type")
    if isinstance(left, dt.datetime) and (left.utcoffset() is None) != (
            right.utcoffset() is None):
        # PostgreSQL would read the naive one in the session's time zone, which the merge
        # does not know (Python's == would say False, its < raise).
        raise ScatterRefused(Refusal.EXPRESSION, part, "compares a timestamp with time zone "
                             "with one without; give the parameter a time zone")
    return left, right


def _to_float8(value: int | float | Decimal, part: str) -> float:
    """A numeric or integer as PostgreSQL converts it to float8 (correctly rounded); out of
    float8's range is PostgreSQL's error ("out of range"), refused here."""
    try:
        converted = float(value)
    except ValueError as exc:  # a signaling NaN: no such numeric in PostgreSQL
        raise ScatterRefused(Refusal.EXPRESSION, part, f"{value} is not a number PostgreSQL "
                             "has") from exc
    if isinstance(value, Decimal) and value.is_finite() and (
            converted in (INF, -INF) or (converted == 0.0 and not value.is_zero())):
        raise ScatterRefused(Refusal.EXPRESSION, part, f"{value} is out of double precision's "
                             "range, PostgreSQL's error")
    return converted
