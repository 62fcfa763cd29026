"""The merge (router/core/merge.py) on values where Python and PostgreSQL part ways: floats against
numeric constants, blank-padded char(n), float4 sums, numeric infinities, infinite
timestamps and comparisons Python cannot make. Plans are built by hand (pure units); the
expected answers are PostgreSQL's, as its documentation and numeric.c/float.c define them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack import ExtType

from protocol.valuetypes import Infinity
from router.backend.wirevalues import Columns
from router.core.merge import ShardRows, ValueOrder, _plain_sorted, _row_key, merge
from router.core.scatter_plan import (
    Bound,
    Combine,
    Cond,
    Grouping,
    Operand,
    Refusal,
    ScatterPlan,
    ScatterRefused,
    SortKey,
)

E = ValueOrder.EXACT


def grouped(combine: Sequence[Combine], keys: tuple[int, ...] = (0,), having: Cond | None = None,
            avg_counts: tuple[tuple[int, int], ...] = (),
            sort: tuple[SortKey, ...] = (), hidden: int = 0) -> ScatterPlan:
    return ScatterPlan("SELECT ...", hidden, sort, None, None,
                       Grouping(keys, tuple(combine), avg_counts, having))


def run(plan: ScatterPlan, columns: list[str], parts: Sequence[Sequence[Sequence[Any]]],
        orders: Sequence[ValueOrder], params: Sequence[Any] = (),
        real: frozenset[int] = frozenset()) -> list[Any]:
    answers = [ShardRows(f"s{i}", columns, [*rows]) for i, rows in enumerate(parts)]
    return merge(plan, params, answers, orders, text_exact=True, real=real)[1]


def col(index: int) -> Operand:
    return Operand(column=index)


# ---- 8: float against a numeric constant or parameter ----------------------------------------


def test_having_converts_a_numeric_constant_to_float8_as_postgresql_does() -> None:
    # SELECT region, max(f) FROM t GROUP BY region HAVING max(f) = 0.1: PostgreSQL has no
    # float8 = numeric operator; the constant becomes float8 0.1, equal to the stored 0.1.
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond("=", left=col(1), right=Operand(value=Decimal("0.1"))))
    assert run(plan, ["region", "max"], [[("asia", 0.1)], [("asia", 0.05)]], [E, E]) == [
        ("asia", 0.1)]
    # A numeric parameter likewise; and an integer becomes float8 too (2**53 + 1 rounds to 2**53).
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond(">=", left=col(1), right=Operand(param=1)))
    assert run(plan, ["region", "max"], [[("a", 0.1)]], [E, E], [Decimal("0.1")]) == [("a", 0.1)]
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond("=", left=col(1), right=Operand(value=2**53 + 1)))
    assert run(plan, ["region", "max"], [[("a", float(2**53))]], [E, E]) == [("a", float(2**53))]
    # A constant beyond float8's range is PostgreSQL's error ("out of range"): refused.
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond("<", left=col(1), right=Operand(value=Decimal("1e400"))))
    with pytest.raises(ScatterRefused, match="HAVING on max"):
        run(plan, ["region", "max"], [[("a", 0.1)]], [E, E])
    # A float parameter against a numeric would be bound as numeric: refused, not guessed;
    # a boolean is no number (PostgreSQL has no boolean > integer).
    plan = grouped((Combine.FIRST, Combine.SUM),
                   having=Cond(">", left=col(1), right=Operand(param=1)))
    for value in (0.5, True):
        with pytest.raises(ScatterRefused, match="HAVING on sum"):
            run(plan, ["region", "sum"], [[("a", Decimal("0.75"))]], [E, E], [value])
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond(">", left=col(1), right=Operand(param=1)))
    with pytest.raises(ScatterRefused, match="HAVING on max"):
        run(plan, ["region", "max"], [[("a", 0.5)]], [E, E], [Decimal("sNaN")])


# ---- 9: char(n) in HAVING --------------------------------------------------------------------


def test_having_on_char_n_ignores_trailing_blanks() -> None:
    # SELECT c, count(*) FROM t GROUP BY c HAVING c = 'ab' (c char(4)): [('ab  ', 4)].
    plan = grouped((Combine.FIRST, Combine.COUNT),
                   having=Cond("=", left=col(0), right=Operand(value="ab")))
    pad = ValueOrder.PADDED
    assert run(plan, ["c", "count"], [[("ab  ", 1)], [("ab  ", 3)], [("b   ", 1)]],
               [pad, E]) == [("ab  ", 4)]
    # HAVING max(c) < 'ab ' is false for 'ab  ' ('ab' = 'ab' with the blanks ignored).
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond("<", left=col(1), right=Operand(value="ab ")))
    assert run(plan, ["r", "max"], [[("x", "ab  ")], [("y", "aa  ")]], [E, pad]) == [
        ("y", "aa  ")]
    # Against a text column, char(n) becomes text without its blanks; the text keeps its own.
    plan = grouped((Combine.FIRST, Combine.FIRST), keys=(0, 1),
                   having=Cond("=", left=col(0), right=col(1)))
    assert run(plan, ["c", "s"], [[("ab  ", "ab"), ("ab  ", "ab ")]], [pad, ValueOrder.TEXT]) == [
        ("ab  ", "ab")]


# ---- 11: sums of real ------------------------------------------------------------------------


def test_sum_and_avg_of_real_are_refused() -> None:
    plan = grouped((Combine.FIRST, Combine.SUM))
    with pytest.raises(ScatterRefused, match="sum") as err:
        run(plan, ["region", "sum"], [[("a", 0.1)], [("a", 0.2)]], [E, E], real=frozenset({1}))
    assert err.value.reason is Refusal.AGGREGATE
    plan = grouped((Combine.FIRST, Combine.AVG, Combine.COUNT), avg_counts=((1, 2),), hidden=1)
    with pytest.raises(ScatterRefused, match="avg"):
        run(plan, ["region", "avg", "_georoute_0"], [[("a", 0.1, 1)]], [E, E, E],
            real=frozenset({1}))
    # min/max of real are exact (no arithmetic), and float8 sums are still combined.
    plan = grouped((Combine.FIRST, Combine.MAX))
    assert run(plan, ["region", "max"], [[("a", 0.5)], [("a", 0.25)]], [E, E],
               real=frozenset({1})) == [("a", 0.5)]
    plan = grouped((Combine.FIRST, Combine.SUM))
    assert run(plan, ["region", "sum"], [[("a", 0.5)], [("a", 0.25)]], [E, E]) == [("a", 0.75)]


# ---- 13: numeric infinities ------------------------------------------------------------------


def test_numeric_infinities_sum_as_postgresql_sums_them() -> None:
    # SELECT sum(n) FROM (VALUES ('Infinity'::numeric), ('-Infinity')) v(n): NaN.
    plan = grouped((Combine.SUM,), keys=())
    inf, ninf = Decimal("Infinity"), Decimal("-Infinity")
    [(total,)] = run(plan, ["sum"], [[(inf,)], [(ninf,)]], [E])
    assert isinstance(total, Decimal) and total.is_nan()
    assert run(plan, ["sum"], [[(inf,)], [(Decimal(5),)]], [E]) == [(inf,)]
    [(total,)] = run(plan, ["sum"], [[(Decimal("NaN"),)], [(inf,)]], [E])
    assert total.is_nan()
    # avg: Infinity / 2 is Infinity; and NaN once the parts cancel.
    plan = grouped((Combine.AVG, Combine.COUNT), keys=(), avg_counts=((0, 1),), hidden=1)
    assert run(plan, ["avg", "_georoute_0"], [[(inf, 1)], [(Decimal(3), 1)]], [E, E]) == [(inf,)]
    [(mean,)] = run(plan, ["avg", "_georoute_0"], [[(inf, 1)], [(ninf, 1)]], [E, E])
    assert mean.is_nan()
    # float8: inf + -inf is NaN too; two finite parts that overflow are PostgreSQL's error.
    plan = grouped((Combine.SUM,), keys=())
    [(total,)] = run(plan, ["sum"], [[(float("inf"),)], [(float("-inf"),)]], [E])
    assert total != total
    with pytest.raises(ScatterRefused, match="sum"):
        run(plan, ["sum"], [[(1.5e308,)], [(1.5e308,)]], [E])


# ---- 14: infinite timestamps and dates -------------------------------------------------------


def test_infinite_timestamps_sort_and_aggregate_beyond_every_finite_value() -> None:
    inf, ninf = Infinity("timestamptz"), Infinity("timestamptz", True)
    t1 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    t2 = dt.datetime(1990, 1, 1, tzinfo=dt.UTC)
    rows = [[(inf,), (t1,)], [(ninf,), (t2,), (None,)]]
    for descending, expected in ((False, [ninf, t2, t1, inf, None]),
                                 (True, [None, inf, t1, t2, ninf])):
        plan = ScatterPlan("SELECT ...", 0, (SortKey(0, descending, descending),), None, None,
                           None)
        assert [r[0] for r in run(plan, ["ts"], rows, [E])] == expected
    plan = grouped((Combine.MIN, Combine.MAX), keys=())
    assert run(plan, ["min", "max"], [[(t1, inf)], [(ninf, t2)]], [E, E]) == [(ninf, inf)]
    # As group keys, and ordered, with a date's infinities.
    day, dinf = dt.date(2000, 1, 1), Infinity("date")
    plan = grouped((Combine.FIRST, Combine.COUNT), sort=(SortKey(0, False, False),))
    assert run(plan, ["d", "count"], [[(dinf, 1), (day, 2)], [(dinf, 3)]], [E, E]) == [
        (day, 2), (dinf, 4)]
    # HAVING max(ts) > $1 with +infinity: true, as in PostgreSQL.
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond(">", left=col(1), right=Operand(param=1)))
    assert run(plan, ["r", "max"], [[("a", inf)], [("b", t2)]], [E, E], [t1]) == [("a", inf)]


# ---- 15: comparisons Python cannot make ------------------------------------------------------


def test_having_comparisons_python_cannot_make_are_refused_naming_the_part() -> None:
    aware = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    naive = dt.datetime(2020, 1, 1)
    for op in (">", "="):  # '=' would silently be False, '>' a TypeError
        plan = grouped((Combine.FIRST, Combine.MAX),
                       having=Cond(op, left=col(1), right=Operand(param=1)))
        with pytest.raises(ScatterRefused, match="HAVING on max") as err:
            run(plan, ["r", "max"], [[("a", aware)]], [E, E], [naive])
        assert err.value.reason is Refusal.EXPRESSION
    # Any other comparison that raises becomes a refusal too, never a TypeError.
    plan = grouped((Combine.FIRST, Combine.MAX),
                   having=Cond("<", left=col(1), right=Operand(param=1)))
    with pytest.raises(ScatterRefused, match="HAVING on max"):
        run(plan, ["r", "max"], [[("a", {"k": 1})]], [E, E], [{"k": 2}])


# ---- rows sorted by their values (pipelined parts, whose column types are known) ----------------

# Parts of pipelined connections say their columns' types (wirevalues.Columns): for ascending
# keys of types Python compares as PostgreSQL does, the merge sorts by the values themselves.
# It must give exactly the rows the generic key gives, NULLs, ties and DESC included.
_TYPED_COLUMNS = {
    "int4": st.none() | st.integers(-3, 3),
    "text": st.none() | st.sampled_from(["", "a", "B", "b", "ab", "é", "z"]),
    "uuid": st.none() | st.sampled_from([ExtType(7, bytes([i]) * 16) for i in (0, 1, 200)]),
    "bool": st.none() | st.booleans(),
    "bytea": st.none() | st.sampled_from([b"", b"\x00", b"\x01", b"\xff\x00"]),
    "int8": st.integers(-(2**63), 2**63 - 1),  # never NULL: the sort by values succeeds
}
_ORDERS = {"int4": E, "text": ValueOrder.TEXT, "uuid": E, "bool": E, "bytea": E, "int8": E}


@st.composite
def typed_merges(draw: st.DrawFn) -> tuple[ScatterPlan, list[str], list[list[list[Any]]], int]:
    types = draw(st.lists(st.sampled_from(sorted(_TYPED_COLUMNS)), min_size=1, max_size=3))
    keys = tuple(
        SortKey(draw(st.integers(0, len(types) - 1)), draw(st.booleans()), draw(st.booleans()))
        for _ in range(draw(st.integers(1, 3))))
    if draw(st.integers(0, 3)):  # mostly ascending: the case sorted by values
        keys = tuple(SortKey(k.column, False, k.nulls_first) for k in keys)
    limit = draw(st.none() | st.integers(0, 12))
    offset = draw(st.none() | st.integers(0, 4))
    plan = ScatterPlan("SELECT ...", 0, keys, None if limit is None else Bound(None, limit),
                       None if offset is None else Bound(None, offset), None, presorted=True)
    parts = [draw(st.lists(st.tuples(*(_TYPED_COLUMNS[t] for t in types)).map(list),
                           max_size=8)) for _ in range(3)]
    # Each shard's rows sorted as PostgreSQL sorts them (the generic key: what is checked
    # against PostgreSQL itself in tests/integration/test_scatter_merge.py).
    orders = [_ORDERS[t] for t in types]
    key = _row_key(keys, orders, True, [f"c{i}" for i in range(len(types))])
    return plan, types, [sorted(part, key=key) for part in parts], len(types)


@settings(max_examples=400, deadline=None)
@given(typed_merges())
def test_rows_sorted_by_their_values_are_the_generic_keys_rows(case: Any) -> None:
    plan, types, parts, width = case
    names = [f"c{i}" for i in range(width)]
    orders = [_ORDERS[t] for t in types]
    typed = [ShardRows(f"s{i}", Columns(names, types), rows) for i, rows in enumerate(parts)]
    untyped = [ShardRows(f"s{i}", names, rows) for i, rows in enumerate(parts)]
    got = merge(plan, (), typed, orders, text_exact=True)
    want = merge(plan, (), untyped, orders, text_exact=True)
    assert got == want
    assert [[type(v) for v in row] for row in got[1]] == [[type(v) for v in row]
                                                          for row in want[1]]


def test_rows_are_sorted_by_their_values_only_where_that_is_exact() -> None:
    rows: list[Sequence[Any]] = [[ExtType(7, b"\x01" * 16), 2], [ExtType(7, b"\x00" * 16), 1]]
    keys = (SortKey(1, False, False), SortKey(0, False, False))
    answer = ShardRows("s", Columns(["id", "n"], ["uuid", "int4"]), rows)
    assert _plain_sorted(keys, [E, E], True, [answer], 2) == rows[::-1]
    # DESC, floats, text under another collation, unknown types, a NULL against a value:
    # the generic key's work.
    assert _plain_sorted((SortKey(1, True, True),), [E, E], True, [answer], 2) is None
    floats = ShardRows("s", Columns(["id", "n"], ["uuid", "float8"]), rows)
    assert _plain_sorted(keys, [E, E], True, [floats], 2) is None
    text = ShardRows("s", Columns(["t"], ["text"]), [["b"], ["a"]])
    assert _plain_sorted((SortKey(0, False, False),), [ValueOrder.TEXT], False, [text], 1) is None
    assert _plain_sorted(keys, [E, E], True, [ShardRows("s", ["id", "n"], rows)], 2) is None
    nulls = ShardRows("s", Columns(["n"], ["int4"]), [[None], [1]])
    assert _plain_sorted((SortKey(0, False, False),), [E], True, [nulls], 1) is None
    both_null = ShardRows("s", Columns(["n"], ["int4"]), [[None], [None]])
    assert _plain_sorted((SortKey(0, False, False),), [E], True, [both_null], 1) == [[None],
                                                                                     [None]]
