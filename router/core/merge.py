"""Cross-shard reads, the merge: the shards' answers in, PostgreSQL's own answer out (pure).

It carries out a `ScatterPlan` (router/core/scatter_plan.py): rows concatenated or merged from
per-shard sorted streams, groups combined from per-shard partial aggregates, then HAVING,
ORDER BY, OFFSET and LIMIT, and the plan's hidden columns dropped. Values are compared as
PostgreSQL compares them, and only where that is known to be exact: each column's
`ValueOrder` says how (from its type); text is exact under the C collation only (the
coordinator says whether the shards' databases use it). Anything else is refused. The
comparison of values is merge_values.py's, HAVING merge_having.py's.
"""

from __future__ import annotations

import datetime as dt
import decimal
import heapq
import itertools
import operator
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from msgpack import ExtType

from protocol.values import ExtCode, ext_hook
from protocol.valuetypes import Infinity
from router.core.merge_having import operand_value, truth
from router.core.merge_values import (
    INF,
    NAN,
    NUMBERS,
    Desc,
    ValueOrder,
    column_name,
    column_orders,
    comparable,
    compare,
    infinite_rank,
    is_nan,
    order_of_type,
    real_columns,
)
from router.core.routing import RoutingError
from router.core.scatter_plan import (
    Combine,
    Refusal,
    ScatterPlan,
    ScatterRefused,
    SortKey,
)

__all__ = [
    "ShardRows", "ValueOrder", "column_orders", "merge", "order_of_type", "pg_numeric_div",
    "real_columns",
]


@dataclass(slots=True)
class ShardRows:
    shard: str
    columns: list[str]
    rows: list[Sequence[Any]]


# Sums of numerics are exact: PostgreSQL's numeric has no rounding in addition either.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def _row_key(keys: Sequence[SortKey], orders: Sequence[ValueOrder], text_exact: bool,
             columns: Sequence[str]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
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
            comparable("", order, text_exact, f"ORDER BY {column_name(columns, index)}")
        null = (0,) if key.nulls_first else (2,)
        resolved.append((index, key.descending, null, order is ValueOrder.PADDED))

    def value_key(value: Any, descending: bool, padded: bool) -> Any:
        if isinstance(value, NUMBERS) and not isinstance(value, bool):
            if is_nan(value):
                return (0,) if descending else (2,)
            return (1, -value) if descending else (1, value)
        if padded and isinstance(value, str):
            value = value.rstrip(" ")
        elif isinstance(value, (dt.date, Infinity)):  # datetime too: a subclass of date
            # Ranked, so 'infinity' sorts after every finite value and '-infinity' before
            # (a column holds only one of the two kinds, so every key has this shape).
            rank = infinite_rank(value)
            value = (rank,) if rank else (0, value)
        return (1, Desc(value)) if descending else (1, value)

    # Values that compare as PostgreSQL's do, ascending, with no NaN or infinity: their key
    # is the value itself (the commonest sort, by an integer, text or uuid, costs no call).
    # A column's values are all of one type, so every key of a column has the same shape.
    plain = frozenset({int, bool, bytes, ExtType})
    plain_text = plain | {str}

    def row_key(row: Sequence[Any]) -> tuple[Any, ...]:
        out: list[tuple[Any, ...]] = []
        for index, descending, null, padded in resolved:
            value = row[index]
            if value is None:
                out.append(null)
            elif not descending and type(value) in (plain if padded else plain_text):
                out.append((1, value))
            else:
                out.append((1, value_key(value, descending, padded)))
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


_UUID_EXT = int(ExtCode.UUID)
# Wire types whose ext bytes do not order as PostgreSQL orders the values (a timestamp or date
# before 1970/2000 is a negative number, whose bytes sort after the positive ones).
_BY_VALUE_TYPES = frozenset({"timestamp", "timestamptz", "date"})


def _canonical(answer: ShardRows, uuid_ext: bool) -> ShardRows:
    """The pipelined connections give uuid, date and timestamp values as the wire's ext types
    (their bytes ready to send), pooled connections as Python values; compared, grouped or
    aggregated together they must be one kind. Dates and timestamps become Python values
    (their ext bytes do not order as PostgreSQL does); the reply encodes them back. A uuid
    stays in its ext form when `uuid_ext` (its 16 bytes order and compare as PostgreSQL's
    uuid does: memcmp), and a pooled part's uuid.UUID takes that form; otherwise (a HAVING,
    which compares values with parameters) every uuid is a uuid.UUID.

    A part of a pipelined connection says its columns' wire types (`Columns.types`): only
    the columns that need it are converted, and a part with none is left as it is."""
    rows = answer.rows
    types = getattr(answer.columns, "types", None)
    if types is not None:
        convert = [i for i, t in enumerate(types)
                   if t in _BY_VALUE_TYPES or (t == "uuid" and not uuid_ext)]
        if not convert:
            return answer
        out: list[Sequence[Any]] = []
        for row in rows:
            values = list(row)
            for i in convert:
                v = values[i]
                if type(v) is ExtType:
                    values[i] = ext_hook(v.code, v.data)
            out.append(values)
        return ShardRows(answer.shard, answer.columns, out)
    if not any(type(value) in _CONVERTED for row in rows for value in row):
        return answer
    canonical: list[Sequence[Any]] = [
        tuple(_one_kind(v, uuid_ext) if type(v) in _CONVERTED else v for v in row)
        for row in rows
    ]
    return ShardRows(answer.shard, answer.columns, canonical)


_CONVERTED = frozenset({ExtType, uuid.UUID})


def _one_kind(value: Any, uuid_ext: bool) -> Any:
    if type(value) is ExtType:
        if uuid_ext and value.code == _UUID_EXT:
            return value
        return ext_hook(value.code, value.data)
    if uuid_ext:  # a uuid.UUID
        return ExtType(_UUID_EXT, value.bytes)
    return value


def merge(
    plan: ScatterPlan, params: Sequence[Any], answers: Sequence[ShardRows],
    orders: Sequence[ValueOrder], *, text_exact: bool, real: frozenset[int] = frozenset(),
) -> tuple[list[str], list[Any]]:
    """The reply's columns and rows: what one database holding every shard's rows returns.
    `real`: the columns whose type is float4 (real), whose sums are not combined."""
    uuid_ext = plan.grouping is None or plan.grouping.having is None
    answers = [_canonical(answer, uuid_ext) for answer in answers]
    columns = list(answers[0].columns) if answers else []
    if plan.grouping is not None:
        _check_real_sums(plan.grouping.combine, real, columns)
    try:
        return _merge(plan, params, answers, orders, text_exact, columns)
    except (TypeError, decimal.DecimalException) as exc:
        # Not reached by any value the merge knows; should one slip through, PostgreSQL's
        # answer is not known, so the read is refused rather than failed with a crash.
        raise ScatterRefused(Refusal.ORDER, "the merge", "values it cannot compare or add "
                             f"exactly ({type(exc).__name__}: {exc})") from exc


def _check_real_sums(combine: Sequence[Combine], real: frozenset[int],
                     columns: Sequence[str]) -> None:
    """sum(real) rounds to float4 and avg(real) accumulates in float8 inside PostgreSQL, so
    neither is the sum of the shards' rounded float4 parts: refused whatever the values."""
    for index, kind in enumerate(combine):
        if kind in (Combine.SUM, Combine.AVG) and index in real:
            what = "avg" if kind is Combine.AVG else "sum"
            raise ScatterRefused(Refusal.AGGREGATE, f"{what} ({column_name(columns, index)})",
                                 f"{what} of real (float4) values is not the sum of the "
                                 "shards' float4 parts; cast to double precision or numeric")


def _merge(plan: ScatterPlan, params: Sequence[Any], answers: Sequence[ShardRows],
           orders: Sequence[ValueOrder], text_exact: bool,
           columns: list[str]) -> tuple[list[str], list[Any]]:
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
            by_values = _plain_sorted(plan.sort, orders, text_exact, answers, len(columns))
            if by_values is not None:
                rows = by_values
            else:
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
    return columns, list(map(tuple, kept))


# Wire types whose values (or NULL) Python compares as PostgreSQL does, when ascending: ints,
# bools, bytes, uuids as their ext type's 16 bytes (or uuid.UUID), and text under the C
# collation. Not floats (NaN), numerics (NaN), dates and timestamps (infinities), bpchar.
_PLAIN_SORT_TYPES = frozenset({"int2", "int4", "int8", "oid", "bool", "bytea", "uuid", "text",
                               "varchar", "name"})


def _plain_sorted(keys: Sequence[SortKey], orders: Sequence[ValueOrder], text_exact: bool,
                  answers: Sequence[ShardRows], width: int) -> list[Any] | None:
    """Every shard's rows sorted by `keys` with no key function of ours, or None when that
    would not be exact (the generic key of _row_key is then used).

    When every key is ascending and of a type in _PLAIN_SORT_TYPES (as each part's column
    types say), the values themselves order the rows as _row_key's keys do, with one
    exception: NULL, which Python cannot compare with a value (TypeError), and which
    compares equal to NULL, as two NULL keys do. So the sort either raises TypeError (and
    the generic key is used) or answers every comparison it made as the generic key
    would; a sort is deterministic, so then its result is the generic key's, rows of equal
    keys in the shards' order, as heapq.merge gives them. Sorting runs in C (the shards'
    sorted runs merge in linear time); a key function of ours cost more than the rest of
    the merge."""
    indexes = []
    for key in keys:
        if key.descending:
            return None
        index = key.column if key.column >= 0 else width + key.column
        order = orders[index]
        if not (order is ValueOrder.EXACT or (order is ValueOrder.TEXT and text_exact)):
            return None
        indexes.append(index)
    for answer in answers:
        types = getattr(answer.columns, "types", None)
        if types is None or len(types) != width:
            return None
        for index in indexes:
            if types[index] not in _PLAIN_SORT_TYPES:
                return None
    # One column: a 1-tuple per row, so that NULL against NULL compares equal (the tuples'
    # == first), not raises (None < None).
    getter = operator.itemgetter(*indexes, indexes[0]) if len(indexes) == 1 else (
        operator.itemgetter(*indexes))
    try:
        return sorted(itertools.chain.from_iterable(a.rows for a in answers), key=getter)
    except TypeError:  # a NULL against a value
        return None


def _check_distinct(index: int, answers: Sequence[ShardRows], columns: Sequence[str]) -> None:
    """DISTINCT is exact by its shard key, unless rows with a NULL key come from two shards."""
    with_null = [a.shard for a in answers if any(row[index] is None for row in a.rows)]
    if len(with_null) > 1:
        raise ScatterRefused(
            Refusal.DISTINCT, f"DISTINCT (by {columns[index]})",
            f"rows with a NULL {columns[index]} came from shards {', '.join(with_null)}: equal "
            "rows of several shards cannot be told apart by it")


# ---- groups -----------------------------------------------------------------------------------


def _group_key(row: Sequence[Any], keys: Sequence[int], orders: Sequence[ValueOrder],
               columns: Sequence[str]) -> tuple[Any, ...]:
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
                                 "compared by the merge exactly")
        if order is ValueOrder.PADDED and isinstance(value, str):
            value = value.rstrip(" ")
        out.append(NAN if is_nan(value) else value)
    return tuple(out)


def _combine(kind: Combine, a: Any, b: Any, order: ValueOrder, text_exact: bool,
             what: str, delimiter: Any = None) -> Any:
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
            if total in (INF, -INF) and a not in (INF, -INF) and b not in (INF, -INF):
                raise ScatterRefused(Refusal.AGGREGATE, what, "the sum overflows double "
                                     "precision, PostgreSQL's error")
            return total  # inf + -inf is NaN, as in PostgreSQL
        if type(a) is int and type(b) is int:  # sum of smallint/integer: a bigint
            total = a + b
            if not _INT8_MIN <= total <= _INT8_MAX:
                raise ScatterRefused(Refusal.AGGREGATE, what,
                                     "the sum is out of bigint's range, PostgreSQL's error")
            return total
        raise ScatterRefused(Refusal.AGGREGATE, what, f"sums of {type(a).__name__} values are "
                                                      "not combined by the merge")
    if kind is Combine.ARRAY and isinstance(a, list) and isinstance(b, list):
        return a + b  # array_agg of arrays too: its first dimension is the rows'
    if kind is Combine.STRING and type(a) is type(b) and isinstance(a, (str, bytes)):
        separator: Any = a[:0] if delimiter is None else delimiter  # NULL joins with nothing
        if type(separator) is not type(a):
            raise ScatterRefused(Refusal.AGGREGATE, what, "string_agg's delimiter is not of "
                                                          "its values' type")
        parts: tuple[Any, Any] = (a, b)
        return separator.join(parts)
    if kind in (Combine.ARRAY, Combine.STRING):
        raise ScatterRefused(Refusal.AGGREGATE, what, f"parts of type {type(a).__name__} are "
                                                      "not joined by the merge")
    if kind is Combine.AND:
        return a and b
    if kind is Combine.OR:
        return a or b
    comparable(a, order, text_exact, what)
    padded = order is ValueOrder.PADDED
    c = compare(a.rstrip(" "), b.rstrip(" ")) if padded else compare(a, b)
    if kind is Combine.MIN:
        return a if c <= 0 else b
    return a if c >= 0 else b


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
             columns: Sequence[str]) -> Iterable[Any]:
    grouping = plan.grouping
    assert grouping is not None
    combine = grouping.combine
    delimiters = {column: operand_value(d, (), params) for column, d in grouping.delimiters}
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
                                        column_name(columns, i), delimiters.get(i))
    merged = list(groups.values())
    if not grouping.keys and not merged:
        return []  # not reached: an aggregate without GROUP BY answers one row per shard
    for row in merged:
        for total, count in grouping.avg_counts:
            row[total] = _average(row[total], row[count], column_name(columns, total))
    if grouping.having is not None:
        merged = [row for row in merged
                  if truth(grouping.having, row, params, orders, text_exact, columns)]
    if plan.sort:
        merged.sort(key=_row_key(plan.sort, orders, text_exact, columns))
    return merged


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
