"""Cross-shard reads, values as the merge compares them: how each result column's Python
values compare against PostgreSQL's order for its type (`ValueOrder`, from the types the
shards describe), and the comparison itself, with PostgreSQL's NaN and the infinities of
timestamps and dates."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from protocol.valuetypes import Infinity
from router.core.scatter_plan import Refusal, ScatterRefused

__all__ = [
    "INF", "NAN", "NUMBERS", "Desc", "ValueOrder", "column_name", "column_orders", "comparable",
    "compare", "infinite_rank", "is_nan", "order_of_type", "real_columns",
]

INF = float("inf")


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


class _NaN:
    """PostgreSQL's NaN: equal to itself and above every other number."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NaN)

    def __hash__(self) -> int:
        return 0x4E614E


NAN = _NaN()


def is_nan(value: Any) -> bool:
    return (isinstance(value, float) and value != value) or (
        isinstance(value, Decimal) and value.is_nan())


def comparable(value: Any, order: ValueOrder, text_exact: bool, what: str) -> Any:
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


def infinite_rank(value: Any) -> int:
    """A timestamp's or date's infinity: 1 above, -1 below every finite value; else 0."""
    if type(value) is Infinity:
        return -1 if value.negative else 1
    return 0


def compare(a: Any, b: Any) -> int:
    """Compare two non-NULL values of one column as PostgreSQL does (NaN above all numbers,
    a timestamp's or date's 'infinity' above and '-infinity' below every other value)."""
    nan_a, nan_b = is_nan(a), is_nan(b)
    if nan_a or nan_b:
        return 0 if nan_a and nan_b else (1 if nan_a else -1)
    if type(a) is Infinity or type(b) is Infinity:
        rank_a, rank_b = infinite_rank(a), infinite_rank(b)
        return -1 if rank_a < rank_b else (1 if rank_a > rank_b else 0)
    return -1 if a < b else (1 if a > b else 0)


class Desc:
    """A value that sorts in reverse (DESC on values that cannot be negated)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]


NUMBERS = (int, float, Decimal)


def column_name(columns: Sequence[str], index: int) -> str:
    return columns[index] if index < len(columns) else f"column {index + 1}"
