"""Cross-shard reads, the plan as data: the statement every shard runs and how their answers
are merged (made by router/core/scatter_rewrite.py from the parse tree, carried out by
router/core/merge.py), and the refusal of what cannot be merged exactly (`ScatterRefused`, naming
the part and why)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from router.core.errors import Refusal, ScatterRefused

__all__ = [
    "Bound",
    "Combine",
    "Cond",
    "Grouping",
    "Operand",
    "Refusal",
    "ScatterPlan",
    "ScatterRefused",
    "SortKey",
]


_BOUND_CAP = 2**61


class Combine(enum.Enum):
    """How one column of the per-shard rows of a group becomes the group's value."""

    FIRST = "first"  # a group key, or an expression of the group's keys: equal on every shard
    COUNT = "count"  # sum of the shards' counts (0 when none)
    SUM = "sum"  # sum of the non-NULL partial sums (NULL when all are NULL)
    MIN = "min"
    MAX = "max"
    AND = "and"
    OR = "or"
    AVG = "avg"  # the column holds a partial sum; `Grouping.avg_counts` names its count
    ARRAY = "array"  # array_agg: the parts' arrays one after another (NULL when all are)
    STRING = "string"  # string_agg: the parts joined by `Grouping.delimiters`' delimiter


@dataclass(frozen=True, slots=True)
class SortKey:
    column: int  # index into a row (negative: a hidden column, counted from the end)
    descending: bool
    nulls_first: bool


@dataclass(frozen=True, slots=True)
class Bound:
    """A LIMIT or OFFSET: a constant, or parameter $param."""

    param: int | None = None
    value: int | None = None

    def bind(self, params: Sequence[Any]) -> Any:
        value = self.value if self.param is None else params[self.param - 1]
        # No answer holds 2**61 rows, so a larger bound means the same as 2**61; and LIMIT
        # plus OFFSET, each up to int8's maximum (a common "no limit"), then stays a size.
        if isinstance(value, int) and not isinstance(value, bool) and value > _BOUND_CAP:
            return _BOUND_CAP
        return value


@dataclass(frozen=True, slots=True)
class Operand:
    """A value in a HAVING condition: a column of the merged row, a constant or $param."""

    column: int | None = None
    param: int | None = None
    value: Any = None


@dataclass(frozen=True, slots=True)
class Cond:
    """A HAVING condition the merge evaluates with SQL's three-valued logic. `op` is
    "and"/"or"/"not" (over `args`), "isnull"/"notnull"/"value" (over `left`; "value": a
    boolean aggregate or column itself), or a comparison
    ("=", "<>", "<", "<=", ">", ">=") of `left` and `right`."""

    op: str
    args: tuple[Cond, ...] = ()
    left: Operand | None = None
    right: Operand | None = None


@dataclass(frozen=True, slots=True)
class Grouping:
    keys: tuple[int, ...]  # the columns whose values make a group (none: one group)
    combine: tuple[Combine, ...]  # one per column of the per-shard rows
    avg_counts: tuple[tuple[int, int], ...]  # (partial sum column, its count column)
    having: Cond | None
    delimiters: tuple[tuple[int, Operand], ...] = ()  # (string_agg column, its delimiter)


@dataclass(frozen=True, slots=True)
class ScatterPlan:
    sql: str  # what every shard runs, with the original's parameters
    hidden: int  # columns appended for the merge, dropped from the reply
    sort: tuple[SortKey, ...]
    limit: Bound | None
    offset: Bound | None
    grouping: Grouping | None  # None: rows are concatenated (or merged by `sort`)
    # Plain DISTINCT made exact by a shard key among its columns: rows of two shards never
    # repeat each other, unless that key is NULL in both (the merge refuses then).
    distinct_key: int | None = None
    # Shards return their rows sorted by `sort` (merged as streams), else the merge sorts.
    presorted: bool = False
    # The original's parameters the shards' statement takes, in its order: HAVING, OFFSET
    # and the like are the merge's, and PostgreSQL refuses a parameter a statement lacks.
    params: tuple[int, ...] = ()

    def shard_params(self, params: Sequence[Any]) -> list[Any]:
        return [params[n - 1] for n in self.params]
