"""Property tests of the cross-shard merge against PostgreSQL itself.

Random rows are spread over the three shards' primaries (a scratch schema on each); the same
rows all sit in one more scratch schema on one primary, the oracle. Each random statement is
planned (router/core/scatter_rewrite.py), its per-shard statement run on each shard, the answers
merged (router/core/merge.py), and the result compared with the oracle running the original
statement on all the rows: the answer one database gives, not a Python re-implementation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgpack import ExtType

from protocol.values import ext_hook
from router.backend.pgcodecs import install_codecs
from router.backend.wirevalues import Columns, column_type
from router.config import Config, TableConfig
from router.core.merge import ShardRows, column_orders, merge, real_columns
from router.core.scatter_plan import Refusal, ScatterRefused
from router.core.scatter_rewrite import plan_scatter
from router.engine.classifier import Classifier
from router.tools.db.connect import connect_node
from router.tools.localcluster import LocalCluster

SHARDS = ("north_america", "europe", "asia")
TABLES = {"t": TableConfig(name="t", region_column="region", id_columns=("id",)),
          "v": TableConfig(name="v", region_column="region", id_columns=("id",))}
DDL = """
DROP SCHEMA IF EXISTS {s} CASCADE;
CREATE SCHEMA {s};
CREATE TABLE {s}.t (id int PRIMARY KEY, region text NOT NULL, a int, b numeric(8, 2),
                    s text, flag bool, f float8);
CREATE TABLE {s}.v (id int PRIMARY KEY, region text NOT NULL, c char(4), r real, n numeric,
                    f float8, ts timestamptz, d date)"""
# Text that orders differently under a linguistic collation than by code point.
WORDS = ["a", "B", "b", "é", "e", "Z", "ä", "", "ab", "a b", "Ω", "zz", "10", "9", "-x"]


class World:
    def __init__(self, runner: asyncio.Runner, shards: dict[str, asyncpg.Connection],
                 oracle: asyncpg.Connection) -> None:
        self.runner = runner
        self.shards = shards
        self.oracle = oracle
        self.classifier = Classifier(TABLES, ("count", "sum", "avg", "min", "max", "bool_and",
                                              "every", "bool_or", "lower", "coalesce", "abs",
                                              "row_number"))

    async def load(self, rows: list[tuple[Any, ...]]) -> None:
        for conn in (*self.shards.values(), self.oracle):
            await conn.execute("TRUNCATE t")
        cols = ("id", "region", "a", "b", "s", "flag", "f")
        for shard, conn in self.shards.items():
            mine = [r for r in rows if r[1] == shard]
            if mine:
                await conn.copy_records_to_table("t", records=mine, columns=cols)
        if rows:
            await self.oracle.copy_records_to_table("t", records=rows, columns=cols)

    async def scattered(self, sql: str, params: list[Any],
                        typed: bool = False) -> list[tuple[Any, ...]]:
        """The merged answer; `typed`: the parts say their columns' types, as the pipelined
        connections' parts do (the merge then sorts by values where that is exact)."""
        plan = plan_scatter(sql, self.classifier.analyze(sql).confinement, TABLES)
        answers = []
        orders = None
        real: frozenset[int] = frozenset()
        for shard, conn in self.shards.items():
            stmt = await conn.prepare(plan.sql)
            records = await stmt.fetch(*plan.shard_params(params))
            orders = column_orders(stmt.get_attributes(), frozenset())
            real = real_columns(stmt.get_attributes())
            names = [a.name for a in stmt.get_attributes()]
            columns = Columns(names, [column_type(a.type.name) for a in stmt.get_attributes()])
            answers.append(ShardRows(shard, columns if typed else names,
                                     [tuple(r) for r in records]))
        assert orders is not None
        return merge(plan, params, answers, orders, text_exact=True, real=real)[1]

    async def truth(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.oracle.fetch(sql, *params)]


@pytest.fixture(scope="module")
def world(cluster: LocalCluster, test_config: Config) -> Iterator[World]:
    with asyncio.Runner() as runner:
        async def connect() -> tuple[dict[str, asyncpg.Connection], asyncpg.Connection]:
            shards = {}
            for name in SHARDS:
                conn = await connect_node(test_config, test_config.shards[name].primary)
                await conn.execute(DDL.format(s="scatter_part"))
                await conn.execute("SET search_path = scatter_part")
                shards[name] = conn
            oracle = await connect_node(test_config, test_config.shards["europe"].primary)
            await oracle.execute(DDL.format(s="scatter_all"))
            await oracle.execute("SET search_path = scatter_all")
            return shards, oracle

        shards, oracle = runner.run(connect())
        yield World(runner, shards, oracle)

        async def close() -> None:
            for conn in (*shards.values(), oracle):
                await conn.execute("DROP SCHEMA IF EXISTS scatter_part CASCADE; "
                                   "DROP SCHEMA IF EXISTS scatter_all CASCADE")
                await conn.close()

        runner.run(close())


def _rows(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    count = draw(st.integers(0, 30))
    rows = []
    for i in range(count):
        rows.append((
            i,
            draw(st.sampled_from(SHARDS)),
            draw(st.none() | st.integers(-3, 3)),  # few values: ties
            draw(st.none() | st.decimals(-50, 50, places=2, allow_nan=False)),
            draw(st.none() | st.sampled_from(WORDS)),
            draw(st.none() | st.booleans()),
            draw(st.none() | st.sampled_from([0.5, -1.0, 2.25, float("nan")])),
        ))
    return rows


@st.composite
def plain_case(draw: st.DrawFn) -> tuple[list[Any], str, list[Any], int, bool]:
    rows = _rows(draw)
    exprs = ["a", "b", "s", "flag", "region", "f", "lower(s)", "a + 1"]
    keys = draw(st.lists(st.sampled_from(exprs), min_size=1, max_size=3, unique=True))
    total = draw(st.booleans())  # end with the unique id: a total order, rows compared whole
    parts = []
    for key in keys:
        direction = draw(st.sampled_from(["", " ASC", " DESC"]))
        nulls = draw(st.sampled_from(["", " NULLS FIRST", " NULLS LAST"]))
        parts.append(f"{key}{direction}{nulls}")
    if total:
        parts.append(f"id{draw(st.sampled_from(['', ' DESC']))}")
    outputs = [*keys] + (["id"] if total else [])
    sql = f"SELECT {', '.join(outputs)} FROM t"
    params: list[Any] = []
    if draw(st.booleans()):
        sql += " WHERE a IS DISTINCT FROM $1"
        params.append(draw(st.integers(-3, 3)))
    sql += " ORDER BY " + ", ".join(parts)
    if draw(st.booleans()):
        params.append(draw(st.integers(0, 12)))
        sql += f" LIMIT ${len(params)}"
        if draw(st.booleans()):
            sql += f" OFFSET {draw(st.integers(0, 8))}"
    return rows, sql, params, len(keys), total


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def _same_rows(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    return len(got) == len(want) and all(
        len(x) == len(y) and all(_same(p, q) for p, q in zip(x, y, strict=True))
        for x, y in zip(got, want, strict=True))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(case=plain_case())
def test_ordered_rows_with_limit_and_offset_equal_one_database(world: World, case: Any) -> None:
    rows, sql, params, nkeys, total = case
    world.runner.run(world.load(rows))
    got = world.runner.run(world.scattered(sql, params))
    want = world.runner.run(world.truth(sql, params))
    # The sort keys' values, in order, are determined even among ties; the rows themselves
    # are when the order is total (ties may be broken either way, as PostgreSQL may).
    assert _same_rows([r[:nkeys] for r in got], [r[:nkeys] for r in want]), sql
    if total:
        assert _same_rows(got, want), sql


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(case=plain_case())
def test_ordered_rows_of_parts_that_say_their_types_equal_one_database(world: World,
                                                                       case: Any) -> None:
    rows, sql, params, nkeys, total = case
    world.runner.run(world.load(rows))
    got = world.runner.run(world.scattered(sql, params, typed=True))
    want = world.runner.run(world.truth(sql, params))
    assert _same_rows([r[:nkeys] for r in got], [r[:nkeys] for r in want]), sql
    if total:
        assert _same_rows(got, want), sql


@st.composite
def grouped_case(draw: st.DrawFn) -> tuple[list[Any], str, list[Any]]:
    rows = _rows(draw)
    keys = draw(st.lists(st.sampled_from(["a", "s", "flag", "region"]), max_size=2, unique=True))
    aggs = draw(st.lists(st.sampled_from([
        "count(*)", "count(b)", "sum(a)", "sum(b)", "min(s)", "max(s)", "min(b)", "max(a)",
        "avg(a)", "avg(b)", "bool_and(flag)", "every(flag)", "bool_or(flag)",
        "count(DISTINCT region)",
        "max(f)", "min(f)"]), min_size=1, max_size=4, unique=True))
    sql = f"SELECT {', '.join([*keys, *aggs])} FROM t"
    params: list[Any] = []
    if draw(st.booleans()):
        sql += " WHERE b IS NOT NULL OR a > 0"
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    having = draw(st.sampled_from([None, "count(*) > $1", "sum(a) >= $1 OR count(*) = 1",
                                   "NOT bool_or(flag)", "avg(b) IS NULL OR avg(b) < $1"]))
    if having is not None:
        if "$1" in having:
            params.append(draw(st.integers(-2, 4)))
        sql += f" HAVING {having}"
    width = len(keys) + len(aggs)
    order = draw(st.lists(st.integers(1, width), max_size=width, unique=True))
    if keys:  # a total order over the groups: every group key, after the random ones
        order += [i + 1 for i in range(len(keys)) if i + 1 not in order]
    if order:
        sql += " ORDER BY " + ", ".join(
            f"{i}{draw(st.sampled_from(['', ' DESC', ' NULLS FIRST', ' DESC NULLS LAST']))}"
            for i in order)
        if draw(st.booleans()):
            sql += f" LIMIT {draw(st.integers(0, 5))} OFFSET {draw(st.integers(0, 3))}"
    return rows, sql, params


def _numbers_close(got: list[tuple[Any, ...]], want: list[tuple[Any, ...]]) -> bool:
    """Exact, except float sums (PostgreSQL's own depend on the order rows are added in)."""
    if len(got) != len(want):
        return False
    for x, y in zip(got, want, strict=True):
        for p, q in zip(x, y, strict=True):
            if isinstance(p, float) and isinstance(q, float) and p == p and q == q:
                if abs(p - q) > 1e-9 * max(1.0, abs(q)):
                    return False
            elif isinstance(p, Decimal) and isinstance(q, Decimal):
                if p != q or p.as_tuple().exponent != q.as_tuple().exponent:
                    return False  # the same value and the same scale, as PostgreSQL prints it
            elif not _same(p, q):
                return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(case=grouped_case())
def test_aggregates_group_by_having_equal_one_database(world: World, case: Any) -> None:
    rows, sql, params = case
    world.runner.run(world.load(rows))
    got = world.runner.run(world.scattered(sql, params))  # none of these may be refused
    want = world.runner.run(world.truth(sql, params))
    if "ORDER BY" not in sql:  # groups come in any order
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert _numbers_close(got, want), (sql, got, want)


def test_an_empty_shard_and_all_empty_shards(world: World) -> None:
    world.runner.run(world.load([(1, "asia", 2, Decimal("1.50"), "x", True, 0.5)]))
    for sql in ("SELECT count(*), sum(a), avg(b), min(s), bool_and(flag) FROM t",
                "SELECT s, count(*) FROM t GROUP BY s ORDER BY 1",
                "SELECT a, s FROM t ORDER BY s LIMIT 5"):
        assert world.runner.run(world.scattered(sql, [])) == world.runner.run(
            world.truth(sql, [])), sql
    world.runner.run(world.load([]))
    sql = "SELECT count(*), sum(a), avg(b), max(s), bool_or(flag) FROM t"
    assert world.runner.run(world.scattered(sql, [])) == [(0, None, None, None, None)]
    assert world.runner.run(world.truth(sql, [])) == [(0, None, None, None, None)]


def test_the_hard_cases_on_purpose(world: World) -> None:
    """What random rows may miss: NaN on several shards (above every number in PostgreSQL),
    averages that round at the 20th digit, numerics of several scales, accents and case."""
    nan = float("nan")
    rows = [
        (1, "asia", 2, Decimal("1.5"), "é", True, nan),
        (2, "europe", 0, Decimal("-0.25"), "E", None, nan),
        (3, "north_america", 0, None, "e", False, 2.25),
        (4, "asia", 1, Decimal("10.00"), None, True, -1.0),
        (5, "europe", 2, Decimal("0.01"), "ä", False, None),
        (6, "north_america", 1, Decimal("3"), "Z", True, 0.5),
        (7, "asia", 2, Decimal("2"), "b", None, 0.5),  # avg(a) = 8/7: rounds up at digit 16
    ]
    world.runner.run(world.load(rows))
    for sql in (
        "SELECT f, id FROM t ORDER BY f, id",
        "SELECT f, id FROM t ORDER BY f DESC NULLS LAST, id LIMIT 4",
        "SELECT s, id FROM t ORDER BY s NULLS FIRST, id",
        "SELECT avg(a), avg(b), sum(b), min(f), max(f) FROM t",
        "SELECT region, avg(a), avg(b), max(s) FROM t GROUP BY region ORDER BY 1",
        "SELECT a, avg(b), count(*) FROM t GROUP BY a HAVING avg(b) < 5 ORDER BY 2 DESC, 1",
    ):
        got = world.runner.run(world.scattered(sql, []))
        want = world.runner.run(world.truth(sql, []))
        assert _numbers_close(got, want), (sql, got, want)


def _unordered(value: Any) -> Any:
    """string_agg's and array_agg's elements, whose order PostgreSQL leaves open."""
    if isinstance(value, str):
        return sorted(value.split("|"))
    if isinstance(value, list):
        return sorted(value, key=repr)
    return value


def test_string_agg_and_array_agg_join_the_shards_parts(world: World) -> None:
    rows = [(1, "asia", 2, None, "x", True, None), (2, "europe", None, None, "y", None, None),
            (3, "europe", 5, None, None, None, None), (4, "north_america", 2, None, "z", None,
                                                       None)]
    world.runner.run(world.load(rows))
    for sql, params in (
        ("SELECT string_agg(s, '|'), array_agg(a) FROM t", []),
        ("SELECT a, string_agg(s, $1), array_agg(region) FROM t GROUP BY a ORDER BY a", ["|"]),
        ("SELECT string_agg(s, '|') FROM t WHERE a > 100", []),  # no rows: NULL
    ):
        got = world.runner.run(world.scattered(sql, params))
        want = world.runner.run(world.truth(sql, params))
        assert [[_unordered(v) for v in r] for r in got] == [
            [_unordered(v) for v in r] for r in want], (sql, got, want)


def _plain(value: Any) -> Any:
    """The oracle's value as the merge gives it: ext values (the router's codecs) as Python
    values, NaN as a string (it equals nothing, itself included)."""
    if isinstance(value, ExtType):
        value = ext_hook(value.code, value.data)
    if isinstance(value, (float, Decimal)) and value != value:
        return "NaN"
    return value


def test_special_values_merge_as_postgresql_answers_them(world: World) -> None:
    """The review's cases, against PostgreSQL itself, with the router's own codecs (infinite
    timestamps and dates as `Infinity`): float8 against a numeric constant, char(n) padding,
    numeric infinities that cancel, infinite timestamps and dates; sums of real are refused."""
    rows = [
        "(1, 'asia', 'ab', 0.1, 'Infinity', 0.1, 'infinity', 'infinity')",
        "(2, 'europe', 'ab', 0.2, '-Infinity', 0.3, '-infinity', '2000-01-01')",
        "(3, 'north_america', 'b', 0.3, 5, 0.05, '2020-01-01 00:00+00', '-infinity')",
        "(4, 'europe', 'ab  ', 0.4, 1.5, 0.1, '1990-06-01 12:00+00', NULL)",
        "(5, 'asia', NULL, 0.7, NULL, NULL, NULL, 'infinity')",
    ]
    by_region: dict[str, list[str]] = {}
    for row in rows:
        by_region.setdefault(row.split("'")[1], []).append(row)

    async def load() -> None:
        for shard, conn in (*world.shards.items(), ("", world.oracle)):
            await install_codecs(conn)
            await conn.execute("TRUNCATE v")
            mine = rows if not shard else by_region.get(shard, [])
            if mine:
                await conn.execute(f"INSERT INTO v VALUES {', '.join(mine)}")

    world.runner.run(load())
    aware = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    for sql, params in (
        ("SELECT region, max(f) FROM v GROUP BY region HAVING max(f) = 0.1 ORDER BY 1", []),
        ("SELECT region, max(f) FROM v GROUP BY region HAVING max(f) >= $1 ORDER BY 1",
         [Decimal("0.1")]),
        ("SELECT c, count(*) FROM v GROUP BY c HAVING c = 'ab' ORDER BY 1", []),
        ("SELECT region, max(c) FROM v GROUP BY region HAVING max(c) < 'ab ' ORDER BY 1", []),
        ("SELECT sum(n), avg(n) FROM v", []),
        ("SELECT region, sum(n), avg(n) FROM v GROUP BY region ORDER BY 1", []),
        ("SELECT ts, id FROM v ORDER BY ts, id", []),
        ("SELECT ts, id FROM v ORDER BY ts DESC NULLS LAST, id", []),
        ("SELECT d, id FROM v ORDER BY d NULLS FIRST, id", []),
        ("SELECT min(ts), max(ts), min(d), max(d) FROM v", []),
        ("SELECT d, count(*) FROM v GROUP BY d ORDER BY d DESC", []),
        ("SELECT region, max(ts) FROM v GROUP BY region HAVING max(ts) > $1 ORDER BY 1",
         [aware]),
    ):
        got = world.runner.run(world.scattered(sql, params))
        want = world.runner.run(world.truth(sql, params))
        assert [tuple(_plain(v) for v in r) for r in got] == [
            tuple(_plain(v) for v in r) for r in want], (sql, got, want)
    for sql in ("SELECT sum(r) FROM v", "SELECT region, avg(r) FROM v GROUP BY region"):
        with pytest.raises(ScatterRefused, match="real"):
            world.runner.run(world.scattered(sql, []))
    # A naive timestamp against a timestamptz aggregate: refused, not a TypeError.
    with pytest.raises(ScatterRefused, match="HAVING on max"):
        world.runner.run(world.scattered(
            "SELECT region, max(ts) FROM v GROUP BY region HAVING max(ts) > $1",
            [dt.datetime(2000, 1, 1)]))


def test_the_reviews_wrong_answers_now_equal_one_database(world: World) -> None:
    """Statements an adversarial review found merged wrongly: an aggregate only in ORDER BY,
    HAVING naming an output alias, ORDER BY the name of a scalar subquery's column, an alias
    after `*`, a "no limit" LIMIT at int8's maximum."""
    rows = [(1, "asia", 1, Decimal("1"), "x", True, 0.5),
            (2, "europe", 1, Decimal("2"), "y", False, 1.5),
            (3, "north_america", 2, Decimal("3"), "x", None, None),
            (4, "asia", 2, Decimal("4"), None, True, 2.5),
            (5, "europe", 3, Decimal("-5"), "z", False, -1.0)]
    world.runner.run(world.load(rows))
    wrong: list[tuple[str, Any, Any]] = []
    for sql, params in (
        ("SELECT 1 AS one FROM t ORDER BY count(*)", []),
        ("SELECT region, count(*) AS a FROM t GROUP BY region, t.a HAVING a = 1 ORDER BY 1",
         []),
        ("SELECT id, (SELECT -t.a AS b) FROM t ORDER BY b, id", []),
        ("SELECT *, a AS z FROM t ORDER BY z, id", []),
        ("SELECT id FROM t ORDER BY id LIMIT $1 OFFSET $2", [2**63 - 1, 2]),
        ("SELECT id FROM t ORDER BY id LIMIT 9223372036854775807 OFFSET 1", []),
    ):
        want = world.runner.run(world.truth(sql, params))
        try:
            got: Any = world.runner.run(world.scattered(sql, params))
        except Exception as exc:  # a wrong answer either way: name them all
            got = exc
        if got != want:
            wrong.append((sql, got, want))
    assert not wrong, wrong


def test_having_and_order_by_errors_are_postgresqls_own(world: World) -> None:
    """The merge applies HAVING and ORDER BY of groups, but PostgreSQL must still judge them
    (ORDER BY r || 'x': output names are not read inside expressions):
    where one database raises an error, so does the scattered read (once it answered)."""
    world.runner.run(world.load([(1, "asia", 1, None, "x", True, None),
                                 (2, "europe", 2, None, "y", False, None)]))
    for sql in ("SELECT region, count(*) FROM t GROUP BY region HAVING bool_or(flag) > 0",
                "SELECT region, count(*) AS cnt FROM t GROUP BY region HAVING cnt > 2",
                "SELECT region AS r, count(*) FROM t GROUP BY region ORDER BY r || 'x'"):
        with pytest.raises(asyncpg.PostgresError) as truth:
            world.runner.run(world.truth(sql, []))
        with pytest.raises(asyncpg.PostgresError) as scattered:
            world.runner.run(world.scattered(sql, []))
        assert scattered.value.sqlstate == truth.value.sqlstate, sql


def test_the_names_the_router_gives_unnamed_columns_are_postgresqls(world: World) -> None:
    """ORDER BY a bare name reads the output columns' names: the router's own idea of the
    name of a column without AS (FigureColname) checked against PostgreSQL's."""
    from pglast import ast, parse_sql

    from router.core.scatter_rewrite import _implicit_name

    exprs = ["a", "t.s", "lower(s)", "a::int", "a::numeric(8, 2)", "1::int", "'x'::text",
             "CASE WHEN flag THEN 1 END", "CASE WHEN flag THEN 1 ELSE a END",
             "CASE WHEN flag THEN 1 ELSE 2::int END", "(SELECT -t.a AS b)", "(SELECT 1)",
             "(SELECT t.s)", "(SELECT lower(t.s) UNION SELECT 'x')", "EXISTS (SELECT 1)",
             "ARRAY(SELECT 1)", "ARRAY[a, 1]", "ROW(a, 1)", "coalesce(a, 1)", "greatest(a, 1)",
             "least(a, 1)", "nullif(a, 1)", "a + 1", "a IS NULL", "NOT flag", "$1::int",
             "s COLLATE \"C\"", "(ARRAY[a])[1]", "a IN (SELECT 1)"]
    for expr in exprs:
        sql = f"SELECT {expr} FROM t"
        stmt = world.runner.run(world.oracle.prepare(sql))
        theirs = stmt.get_attributes()[0].name
        select = parse_sql(sql)[0].stmt
        assert isinstance(select, ast.SelectStmt) and select.targetList is not None
        ours = _implicit_name(select.targetList[0].val)
        assert ours == theirs, (expr, ours, theirs)


def test_an_outer_join_from_a_table_on_every_shard_is_the_truth_or_refused(
        world: World) -> None:
    """A reference table is on every shard: kept by an outer join where no row of `t` matches,
    its rows came back once per shard that had no match, where one database gives them once
    (and only when no shard matches). Answered exactly, or refused."""
    world.runner.run(world.load([(1, "asia", 1, None, "x", True, None),
                                 (2, "europe", 1, None, "y", False, None),
                                 (3, "north_america", 2, None, "z", None, None)]))

    async def reference() -> None:
        for conn in (*world.shards.values(), world.oracle):
            await conn.execute("DROP TABLE IF EXISTS ref; CREATE TABLE ref (k int); "
                               "INSERT INTO ref VALUES (1), (2), (99)")

    world.runner.run(reference())
    for sql in ("SELECT ref.k, t.id FROM ref LEFT JOIN t ON t.a = ref.k ORDER BY 1, 2",
                "SELECT count(*) FROM ref LEFT JOIN t ON t.a = ref.k",
                "SELECT ref.k, count(*) FROM t RIGHT JOIN ref ON t.a = ref.k GROUP BY 1 "
                "ORDER BY 1",
                "SELECT count(*) FROM ref FULL JOIN t ON t.a = ref.k",
                "SELECT v.k, t.id FROM (VALUES (1), (99)) v(k) LEFT JOIN t ON t.a = v.k "
                "ORDER BY 1, 2"):
        want = world.runner.run(world.truth(sql, []))
        try:
            got = world.runner.run(world.scattered(sql, []))
        except ScatterRefused as exc:
            assert exc.reason is Refusal.NOT_COLOCATED, sql
            continue
        assert got == want, (sql, got, want)
    # An inner join, or a sharded table on the kept side, is merged as before.
    for sql in ("SELECT ref.k, t.id FROM ref JOIN t ON t.a = ref.k ORDER BY 1, 2",
                "SELECT t.id, ref.k FROM t LEFT JOIN ref ON t.a = ref.k ORDER BY 1"):
        assert world.runner.run(world.scattered(sql, [])) == world.runner.run(
            world.truth(sql, [])), sql
