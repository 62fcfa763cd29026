"""Cross-shard reads, the merge: the shards' answers in, PostgreSQL's own answer out (pure).

It carries out a `ScatterPlan` (router/scatter_plan.py): rows concatenated or merged from
per-shard sorted streams, groups combined from per-shard partial aggregates, then HAVING,
ORDER BY, OFFSET and LIMIT, and the plan's hidden columns dropped. Values are compared as
PostgreSQL compares them, and only where that is known to be exact: each column's
`ValueOrder` says how (from its type); text is exact under the C collation only (the
coordinator says whether the shards' databases use it). Anything else is refused.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from msgpack import ExtType

from protocol.values import ext_hook
from protocol.valuetypes import Infinity
from router.routing import RoutingError
from router.scatter_plan import (
    Combine,
    Cond,
    Operand,
    Refusal,
    ScatterPlan,
    ScatterRefused,
    SortKey,
)

__all__ = [
    "ShardRows", "ValueOrder", "column_orders", "merge", "order_of_type", "pg_numeric_div",
    "real_columns",
]


class ValueOrder(enum.Enum):
    """How a column's Python values compare, against how PostgreSQL compares them."""

    EXACT = "exact"  # numbers, booleans, dates and times, uuid, bytea: as PostgreSQL
    TEXT = "text"  # text: exact under the C collation (code-point order), else unknown
    PADDED = "padded"  # character(n): trailing blanks do not count
    EQUAL = "equal"  # equality is exact (an enum's label), order is not (declaration order)
    NONE = "none"  # neither is known to be exact (json, arrays, intervals, other types)


# Built-in type oids (pg_type.dat) whose values asyncpg decodes into Python values that
# compare exactly as PostgreSQL compares them.
_EXACT_OIDS = frozenset({16, 17, 20, 21, 23, 26, 700, 701, 1082, 1083, 1114, 1184, 1700, 2950})
_TEXT_OIDS = frozenset({19, 25, 1043})
_BPCHAR_OID = 1042


def order_of_type(oid: int, enum_type: bool = False) -> ValueOrder:
    if oid in _EXACT_OIDS:
        return ValueOrder.EXACT
    if oid in _TEXT_OIDS:
        return ValueOrder.TEXT
    if oid == _BPCHAR_OID:
        return ValueOrder.PADDED
    return ValueOrder.EQUAL if enum_type else ValueOrder.NONE


def column_orders(attributes: Iterable[Any], enum_oids: frozenset[int]) -> list[ValueOrder]:
    """How each result column compares, from the types PostgreSQL described (asyncpg's
    attributes: `.type.oid`); `enum_oids` are the database's enum types."""
    return [order_of_type(a.type.oid, a.type.oid in enum_oids) for a in attributes]


_FLOAT4_OID = 700


def real_columns(attributes: Iterable[Any]) -> frozenset[int]:
    """The result columns of type real (float4): their sums are not combined (merge's `real`)."""
    return frozenset(i for i, a in enumerate(attributes) if a.type.oid == _FLOAT4_OID)


@dataclass(slots=True)
class ShardRows:
    shard: str
    columns: list[str]
    rows: list[Sequence[Any]]


# Sums of numerics are exact: PostgreSQL's numeric has no rounding in addition either.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


class _NaN:
    """PostgreSQL's NaN: equal to itself and above every other number."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NaN)

    def __hash__(self) -> int:
        return 0x4E614E


_NAN = _NaN()


def _is_nan(value: Any) -> bool:
    return (isinstance(value, float) and value != value) or (
        isinstance(value, Decimal) and value.is_nan())  # fmt: skip


def _comparable(value: Any, order: ValueOrder, text_exact: bool, what: str) -> Any:
    if order is ValueOrder.EXACT:
        return value
    if order is ValueOrder.TEXT and text_exact:
        return value
    if order is ValueOrder.PADDED and text_exact:
        return value.rstrip(" ") if isinstance(value, str) else value
    if order is ValueOrder.NONE:
        why = f"values of this type ({type(value).__name__}) are not compared exactly here"
    elif order is ValueOrder.EQUAL:
        why = "an enum sorts by its declaration order, which the merge does not know"
    else:
        why = "text is compared exactly only under the C collation"
    raise ScatterRefused(Refusal.ORDER, what, why)


def _infinite_rank(value: Any) -> int:
    """A timestamp's or date's infinity: 1 above, -1 below every finite value; else 0."""
    if type(value) is Infinity:
        return -1 if value.negative else 1
    return 0


def _cmp(a: Any, b: Any) -> int:
    """Compare two non-NULL values of one column as PostgreSQL does (NaN above all numbers,
    a timestamp's or date's 'infinity' above and '-infinity' below every other value)."""
    nan_a, nan_b = _is_nan(a), _is_nan(b)
    if nan_a or nan_b:
        return 0 if nan_a and nan_b else (1 if nan_a else -1)
    if type(a) is Infinity or type(b) is Infinity:
        rank_a, rank_b = _infinite_rank(a), _infinite_rank(b)
        return -1 if rank_a < rank_b else (1 if rank_a > rank_b else 0)
    return -1 if a < b else (1 if a > b else 0)


class _Desc:
    """A value that sorts in reverse (DESC on values that cannot be negated)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


_NUMBERS = (int, float, Decimal)


def _row_key(keys: Sequence[SortKey], orders: Sequence[ValueOrder], text_exact: bool,
             columns: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:  # fmt: skip
    """A sort key for rows, as PostgreSQL orders them by `keys`: NULLs first or last, NaN
    above every number, DESC by negating numbers (and reversing the rest). A key function,
    not a comparison: Python compares the tuples in C (a comparison function cost about
    1 us per pair, most of a 60-row merge)."""
    width = len(orders)
    resolved = []
    for key in keys:
        index = key.column if key.column >= 0 else width + key.column
        order = orders[index]
        if order is not ValueOrder.EXACT:  # refused now, before any row is compared
            _comparable("", order, text_exact, f"ORDER BY {_name(columns, index)}")
        null = (0,) if key.nulls_first else (2,)
        resolved.append((index, key.descending, null, order is ValueOrder.PADDED))

    def value_key(value: Any, descending: bool, padded: bool) -> Any:
        if isinstance(value, _NUMBERS) and not isinstance(value, bool):
            if _is_nan(value):
                return (0,) if descending else (2,)
            return (1, -value) if descending else (1, value)
        if padded and isinstance(value, str):
            value = value.rstrip(" ")
        elif isinstance(value, (dt.date, Infinity)):  # datetime too: a subclass of date
            # Ranked, so 'infinity' sorts after every finite value and '-infinity' before
            # (a column holds only one of the two kinds, so every key has this shape).
            rank = _infinite_rank(value)
            value = (rank,) if rank else (0, value)
        return (1, _Desc(value)) if descending else (1, value)

    def row_key(row: Sequence[Any]) -> tuple[Any, ...]:
        out = []
        for index, descending, null, padded in resolved:
            value = row[index]
            out.append(null if value is None else (1, value_key(value, descending, padded)))
        return tuple(out)

    return row_key


def _bound(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RoutingError(f"{what} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise RoutingError(f"{what} must not be negative")
    return value


def _canonical(answer: ShardRows) -> ShardRows:
    """The pipelined connections give uuid, date and timestamp values as the wire's ext types
    (their bytes ready to send), pooled connections as Python values; compared, grouped or
    aggregated together they must be one kind. The ext bytes do not order as PostgreSQL
    does either (a timestamp before 2000 is a negative number), so they become Python
    values; the reply encodes them back."""
    rows = answer.rows
    if not any(type(value) is ExtType for row in rows for value in row):
        return answer
    canonical: list[Sequence[Any]] = [
        tuple(ext_hook(v.code, v.data) if type(v) is ExtType else v for v in row)
        for row in rows
    ]
    return ShardRows(answer.shard, answer.columns, canonical)


def merge(
    plan: ScatterPlan, params: Sequence[Any], answers: Sequence[ShardRows],
    orders: Sequence[ValueOrder], *, text_exact: bool, real: frozenset[int] = frozenset(),
) -> tuple[list[str], list[Any]]:
    """The reply's columns and rows: what one database holding every shard's rows returns.
    `real`: the columns whose type is float4 (real), whose sums are not combined."""
    answers = [_canonical(answer) for answer in answers]
    columns = list(answers[0].columns) if answers else []
    if plan.grouping is not None:
        _check_real_sums(plan.grouping.combine, real, columns)
    try:
        return _merge(plan, params, answers, orders, text_exact, columns)
    except (TypeError, decimal.DecimalException) as exc:
        # Not reached by any value the merge knows; should one slip through, PostgreSQL's
        # answer is not known, so the read is refused rather than failed with a crash.
        raise ScatterRefused(Refusal.ORDER, "the merge", "values it cannot compare or add "
                             f"exactly ({type(exc).__name__}: {exc})") from exc  # fmt: skip


def _check_real_sums(combine: Sequence[Combine], real: frozenset[int],
                     columns: Sequence[str]) -> None:  # fmt: skip
    """sum(real) rounds to float4 and avg(real) accumulates in float8 inside PostgreSQL, so
    neither is the sum of the shards' rounded float4 parts: refused whatever the values."""
    for index, kind in enumerate(combine):
        if kind in (Combine.SUM, Combine.AVG) and index in real:
            what = "avg" if kind is Combine.AVG else "sum"
            raise ScatterRefused(Refusal.AGGREGATE, f"{what} ({_name(columns, index)})",
                                 f"{what} of real (float4) values is not the sum of the "
                                 "shards' float4 parts; cast to double precision or numeric")


def _merge(plan: ScatterPlan, params: Sequence[Any], answers: Sequence[ShardRows],
           orders: Sequence[ValueOrder], text_exact: bool,
           columns: list[str]) -> tuple[list[str], list[Any]]:  # fmt: skip
    limit = _bound(plan.limit.bind(params), "LIMIT") if plan.limit is not None else None
    offset = _bound(plan.offset.bind(params), "OFFSET") if plan.offset is not None else None
    visible = len(columns) - plan.hidden
    if plan.grouping is not None:
        rows: Iterable[Any] = _grouped(plan, params, answers, orders, text_exact, columns)
    else:
        if plan.distinct_key is not None:
            _check_distinct(plan.distinct_key, answers, columns)
        streams = [answer.rows for answer in answers]
        if plan.sort:
            key = _row_key(plan.sort, orders, text_exact, columns)
            if plan.presorted:
                rows = heapq.merge(*streams, key=key)
            else:
                rows = sorted(itertools.chain.from_iterable(streams), key=key)
        else:
            rows = itertools.chain.from_iterable(streams)
    start = offset or 0
    stop = None if limit is None else start + limit
    kept = itertools.islice(rows, start, stop)  # rows past the LIMIT are never built
    if plan.hidden:
        return columns[:visible], [tuple(row[:visible]) for row in kept]
    return columns, [tuple(row) for row in kept]


def _check_distinct(index: int, answers: Sequence[ShardRows], columns: Sequence[str]) -> None:
    """DISTINCT is exact by its shard key, unless rows with a NULL key come from two shards."""
    with_null = [a.shard for a in answers if any(row[index] is None for row in a.rows)]
    if len(with_null) > 1:
        raise ScatterRefused(
            Refusal.DISTINCT, f"DISTINCT (by {columns[index]})",
            f"rows with a NULL {columns[index]} came from shards {', '.join(with_null)}: equal "
            "rows of several shards cannot be told apart by it")  # fmt: skip


# ---- groups -----------------------------------------------------------------------------------


def _group_key(row: Sequence[Any], keys: Sequence[int], orders: Sequence[ValueOrder],
               columns: Sequence[str]) -> tuple[Any, ...]:  # fmt: skip
    out: list[Any] = []
    for index in keys:
        value = row[index]
        order = orders[index]
        if value is None:
            out.append(None)
            continue
        if order is ValueOrder.NONE:
            raise ScatterRefused(Refusal.ORDER, f"GROUP BY {columns[index]}",
                                 f"values of this type ({type(value).__name__}) are not "
                                 "compared by the merge exactly")  # fmt: skip
        if order is ValueOrder.PADDED and isinstance(value, str):
            value = value.rstrip(" ")
        out.append(_NAN if _is_nan(value) else value)
    return tuple(out)


def _combine(kind: Combine, a: Any, b: Any, order: ValueOrder, text_exact: bool,
             what: str, delimiter: Any = None) -> Any:  # fmt: skip
    if kind is Combine.FIRST:
        return a
    if kind is Combine.COUNT:
        return a + b
    if a is None:
        return b
    if b is None:
        return a
    if kind in (Combine.SUM, Combine.AVG):
        if isinstance(a, Decimal) or isinstance(b, Decimal):
            if type(a) in (int, Decimal) and type(b) in (int, Decimal):
                return _numeric_add(Decimal(a), Decimal(b), what)
        if isinstance(a, float) and isinstance(b, float):
            total = a + b
            if total in (_INF, -_INF) and a not in (_INF, -_INF) and b not in (_INF, -_INF):
                raise ScatterRefused(Refusal.AGGREGATE, what, "the sum overflows double "
                                     "precision, PostgreSQL's error")  # fmt: skip
            return total  # inf + -inf is NaN, as in PostgreSQL
        if type(a) is int and type(b) is int:  # sum of smallint/integer: a bigint
            total = a + b
            if not _INT8_MIN <= total <= _INT8_MAX:
                raise ScatterRefused(Refusal.AGGREGATE, what,
                                     "the sum is out of bigint's range, PostgreSQL's error")
            return total
        raise ScatterRefused(Refusal.AGGREGATE, what, f"sums of {type(a).__name__} values are "
                                                      "not combined by the merge")  # fmt: skip
    if kind is Combine.ARRAY and isinstance(a, list) and isinstance(b, list):
        return a + b  # array_agg of arrays too: its first dimension is the rows'
    if kind is Combine.STRING and type(a) is type(b) and isinstance(a, (str, bytes)):
        separator: Any = a[:0] if delimiter is None else delimiter  # NULL joins with nothing
        if type(separator) is not type(a):
            raise ScatterRefused(Refusal.AGGREGATE, what, "string_agg's delimiter is not of "
                                                          "its values' type")  # fmt: skip
        parts: tuple[Any, Any] = (a, b)
        return separator.join(parts)
    if kind in (Combine.ARRAY, Combine.STRING):
        raise ScatterRefused(Refusal.AGGREGATE, what, f"parts of type {type(a).__name__} are "
                                                      "not joined by the merge")  # fmt: skip
    if kind is Combine.AND:
        return a and b
    if kind is Combine.OR:
        return a or b
    _comparable(a, order, text_exact, what)
    padded = order is ValueOrder.PADDED
    c = _cmp(a.rstrip(" "), b.rstrip(" ")) if padded else _cmp(a, b)
    if kind is Combine.MIN:
        return a if c <= 0 else b
    return a if c >= 0 else b


_INF = float("inf")
_INT8_MIN, _INT8_MAX = -(2**63), 2**63 - 1


def _numeric_add(a: Decimal, b: Decimal, what: str) -> Decimal:
    """a + b as PostgreSQL's numeric adds: exactly, NaN absorbing, Infinity + -Infinity NaN
    (numeric.c, numeric_add_opt_error); Python's decimal would raise InvalidOperation."""
    if not a.is_finite() or not b.is_finite():
        if a.is_nan() or b.is_nan():
            return Decimal("NaN")
        if a.is_infinite() and b.is_infinite() and a.is_signed() != b.is_signed():
            return Decimal("NaN")
        return a if a.is_infinite() else b
    try:
        return _EXACT.add(a, b)
    except decimal.DecimalException as exc:  # beyond any numeric PostgreSQL keeps
        raise ScatterRefused(Refusal.AGGREGATE, what, f"the sum cannot be added exactly "
                                                      f"({type(exc).__name__})") from exc


def _grouped(plan: ScatterPlan, params: Sequence[Any], answers: Sequence[ShardRows],
             orders: Sequence[ValueOrder], text_exact: bool,
             columns: Sequence[str]) -> Iterable[Any]:  # fmt: skip
    grouping = plan.grouping
    assert grouping is not None
    combine = grouping.combine
    delimiters = {column: _value(d, (), params) for column, d in grouping.delimiters}
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for answer in answers:
        for row in answer.rows:
            key = _group_key(row, grouping.keys, orders, columns)
            found = groups.get(key)
            if found is None:
                groups[key] = list(row)
                continue
            for i, kind in enumerate(combine):
                if kind is not Combine.FIRST:
                    found[i] = _combine(kind, found[i], row[i], orders[i], text_exact,
                                        _name(columns, i), delimiters.get(i))  # fmt: skip
    merged = list(groups.values())
    if not grouping.keys and not merged:
        return []  # not reached: an aggregate without GROUP BY answers one row per shard
    for row in merged:
        for total, count in grouping.avg_counts:
            row[total] = _average(row[total], row[count], _name(columns, total))
    if grouping.having is not None:
        merged = [row for row in merged
                  if _truth(grouping.having, row, params, orders, text_exact, columns)]  # fmt: skip
    if plan.sort:
        merged.sort(key=_row_key(plan.sort, orders, text_exact, columns))
    return merged


def _name(columns: Sequence[str], index: int) -> str:
    return columns[index] if index < len(columns) else f"column {index + 1}"


def _average(total: Any, count: int, what: str) -> Any:
    """avg as PostgreSQL computes it from its sum and count (numeric division's scale)."""
    if not count or total is None:
        return None
    if isinstance(total, float):
        return total / count
    if isinstance(total, (int, Decimal)) and not isinstance(total, bool):
        return pg_numeric_div(Decimal(total), Decimal(count))
    raise ScatterRefused(Refusal.AGGREGATE, what,
                         f"avg of {type(total).__name__} values is not combined by the merge")


def _weight_and_first(value: Decimal) -> tuple[int, int]:
    """PostgreSQL's numeric weight (in base-10000 digits) and its first base-10000 digit."""
    if value.is_zero():
        return 0, 0
    magnitude = abs(value)
    weight = magnitude.adjusted() // 4
    first = int(magnitude.scaleb(-4 * weight, context=_EXACT)) % 10000
    return weight, first


def _dscale(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def pg_numeric_div(x: Decimal, y: Decimal) -> Decimal:
    """x / y as PostgreSQL's numeric_div gives it: select_div_scale's result scale, rounded
    half away from zero (numeric.c). NaN gives NaN and an infinity over a finite number its
    signed infinity, as PostgreSQL 14+; an infinite divisor is refused."""
    if not x.is_finite() or not y.is_finite():
        if x.is_nan() or y.is_nan():
            return Decimal("NaN")
        if x.is_infinite() and y.is_finite() and not y.is_zero():
            # PostgreSQL 14+: an infinity divided by a finite non-zero number keeps its
            # infinity, signed by both (what avg of a sum that reached Infinity gives).
            return Decimal("-Infinity" if x.is_signed() != y.is_signed() else "Infinity")
        raise ScatterRefused(Refusal.AGGREGATE, "avg", "infinite divisors are not combined")
    weight1, first1 = _weight_and_first(x)
    weight2, first2 = _weight_and_first(y)
    qweight = weight1 - weight2
    if first1 <= first2:
        qweight -= 1
    rscale = 16 - qweight * 4  # NUMERIC_MIN_SIG_DIGITS - qweight * DEC_DIGITS
    rscale = min(max(rscale, _dscale(x), _dscale(y), 0), 1000)
    # Exactly, in integers: x = a / 10^sa, y = b / 10^sb.
    sa, sb = _dscale(x), _dscale(y)
    a = int(x.scaleb(sa, context=_EXACT))
    b = int(y.scaleb(sb, context=_EXACT))
    numerator = a * 10 ** (sb + rscale)
    denominator = b * 10**sa
    negative = (numerator < 0) != (denominator < 0)
    q, r = divmod(abs(numerator), abs(denominator))
    if 2 * r >= abs(denominator):
        q += 1
    digits = tuple(int(d) for d in str(q))
    return Decimal((1 if negative and q else 0, digits, -rscale))


# ---- HAVING -----------------------------------------------------------------------------------


def _value(operand: Operand | None, row: Sequence[Any], params: Sequence[Any]) -> Any:
    assert operand is not None
    if operand.column is not None:
        return row[operand.column]
    if operand.param is not None:
        return params[operand.param - 1]
    return operand.value


def _truth(cond: Cond, row: Sequence[Any], params: Sequence[Any], orders: Sequence[ValueOrder],
           text_exact: bool, columns: Sequence[str]) -> bool | None:  # fmt: skip
    """SQL's three-valued truth of a HAVING condition (None: unknown)."""
    op = cond.op
    if op in ("and", "or"):
        results = [_truth(c, row, params, orders, text_exact, columns) for c in cond.args]
        if op == "and":
            return False if False in results else (None if None in results else True)
        return True if True in results else (None if None in results else False)
    if op == "not":
        inner = _truth(cond.args[0], row, params, orders, text_exact, columns)
        return None if inner is None else not inner
    left = _value(cond.left, row, params)
    if op == "isnull":
        return left is None
    if op == "notnull":
        return left is not None
    if op == "value":
        if left is None or isinstance(left, bool):
            return left
        raise ScatterRefused(Refusal.EXPRESSION, "HAVING", "a condition that is not a boolean")
    right = _value(cond.right, row, params)
    if left is None or right is None:
        return None
    assert cond.left is not None and cond.right is not None
    named = [side.column for side in (cond.left, cond.right) if side.column is not None]
    part = f"HAVING on {_name(columns, named[0])}" if named else "HAVING"
    padded = [False, False]
    for i, side in enumerate((cond.left, cond.right)):
        if side.column is not None:
            order = orders[side.column]
            equality = op in ("=", "<>") and order is not ValueOrder.NONE
            if order is not ValueOrder.EXACT and not equality:
                _comparable(left, order, text_exact, f"HAVING on {_name(columns, side.column)}")
            padded[i] = order is ValueOrder.PADDED
    if any(padded):
        # char(n) = char(n) (a constant or parameter is taken as char(n) too) ignores
        # trailing blanks on both sides; against a text column, char(n) becomes text
        # without them, and the text keeps its own.
        strip = [padded[i] or side.column is None
                 for i, side in enumerate((cond.left, cond.right))]  # fmt: skip
        if isinstance(left, str) and strip[0]:
            left = left.rstrip(" ")
        if isinstance(right, str) and strip[1]:
            right = right.rstrip(" ")
    left, right = _comparable_pair(left, right, cond.left, cond.right, part)
    try:
        c = _cmp(left, right)
    except TypeError as exc:
        raise ScatterRefused(Refusal.EXPRESSION, part, f"compares a {type(left).__name__} with "
                             f"a {type(right).__name__} in a way the merge cannot judge "
                             f"({exc}); give the constant the column's type") from exc
    return {"=": c == 0, "<>": c != 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}[op]


def _comparable_pair(left: Any, right: Any, left_side: Operand, right_side: Operand,
                     part: str) -> tuple[Any, Any]:  # fmt: skip
    """Two HAVING values as PostgreSQL compares them, or a refusal naming `part`: a float
    against a numeric or integer is compared as float8 (PostgreSQL has no float8 = numeric
    operator; the numeric side is converted), infinities of timestamps and dates against
    any of their type, and otherwise only values of one kind."""
    numbers = (int, float, Decimal)
    if isinstance(left, numbers) and isinstance(right, numbers) and not (
            isinstance(left, bool) or isinstance(right, bool)):  # fmt: skip
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
                             "give the constant the column's type")  # fmt: skip
    if isinstance(left, dt.datetime) and (left.utcoffset() is None) != (
            right.utcoffset() is None):  # fmt: skip
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
            converted in (_INF, -_INF) or (converted == 0.0 and not value.is_zero())):  # fmt: skip
        raise ScatterRefused(Refusal.EXPRESSION, part, f"{value} is out of double precision's "
                             "range, PostgreSQL's error")
    return converted
