"""The cross-shard rewrite (router/core/scatter_rewrite.py) and the merge's pure parts (merge.py):
what each shard is asked, what is refused and why. Correctness of merged answers against
PostgreSQL itself is in tests/integration/test_scatter_merge.py."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from router.config import Config, load_config
from router.core.merge import ShardRows, ValueOrder, merge, pg_numeric_div
from router.core.routing import CrossShardError, MissingShardKeyError, OneShard, Scatter, route
from router.core.scatter_plan import Combine, Refusal, ScatterPlan, ScatterRefused
from router.core.scatter_rewrite import plan_scatter
from router.engine.classifier import Classifier
from tests.support.ids import new_id

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "router.toml")


@pytest.fixture(scope="module")
def classifier(config: Config) -> Classifier:
    return Classifier(config.tables, config.router.read_only_functions,
                      sharded_functions=config.router.sharded_functions)


def plan(classifier: Classifier, config: Config, sql: str) -> ScatterPlan:
    return plan_scatter(sql, classifier.analyze(sql).confinement, config.tables)


def refused(classifier: Classifier, config: Config, sql: str) -> ScatterRefused:
    with pytest.raises(ScatterRefused) as err:
        plan(classifier, config, sql)
    return err.value


def test_each_shard_is_asked_for_limit_plus_offset_and_the_sort_keys(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT title FROM courses ORDER BY price_cents DESC, course_id "
                                 "LIMIT 10 OFFSET 5")
    assert p.sql == ("SELECT title, price_cents AS _georoute_0, course_id AS _georoute_1 FROM "
                     "courses ORDER BY price_cents DESC, course_id LIMIT 15")
    assert p.hidden == 2 and p.presorted
    assert [(k.column, k.descending, k.nulls_first) for k in p.sort] == [(-2, True, True),
                                                                         (-1, False, False)]
    # Parameters: the shards get LIMIT $1 + $2 (capped at int8's maximum), numbered as their
    # statement uses them.
    p = plan(classifier, config, "SELECT title FROM courses WHERE status = $3 ORDER BY 1 "
                                 "LIMIT $1 OFFSET $2")
    assert p.sql.startswith("SELECT title FROM courses WHERE status = $3 ORDER BY 1 LIMIT ")
    assert "CAST($1 AS int8)" in p.sql and "CAST($2 AS int8)" in p.sql
    assert p.params == (1, 2, 3)


def test_avg_is_split_into_sum_and_count_and_having_is_checked_by_the_shards(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT region, avg(price_cents) FROM courses WHERE status = $2 "
                                 "GROUP BY region HAVING count(*) > $1 ORDER BY 2")
    # HAVING is applied by the merge; the shards keep every group but check the condition
    # as PostgreSQL does on one database: a type or a name error is theirs.
    assert p.sql == ("SELECT region, sum(price_cents) AS avg, count(price_cents) AS _georoute_0, "
                     "count(*) AS _georoute_1 FROM courses WHERE status = $2 GROUP BY region "
                     "HAVING CASE WHEN count(*) > $1 THEN TRUE ELSE TRUE END")
    assert p.params == (1, 2)
    assert p.grouping is not None
    assert p.grouping.combine == (Combine.FIRST, Combine.AVG, Combine.COUNT, Combine.COUNT)
    assert p.grouping.avg_counts == ((1, 2),)


@pytest.mark.parametrize(("sql", "reason", "part"), [
    ("SELECT row_number() OVER () FROM users", Refusal.WINDOW, "row_number() OVER ()"),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY price_cents) FROM courses",
     Refusal.AGGREGATE, "percentile_cont"),
    ("SELECT string_agg(title, ',' ORDER BY title) FROM courses", Refusal.AGGREGATE,
     "string_agg"),
    ("SELECT array_agg(DISTINCT title) FROM courses", Refusal.DISTINCT, "array_agg"),
    ("SELECT string_agg(title, title) FROM courses", Refusal.AGGREGATE, "delimiter"),
    ("SELECT json_agg(title) FROM courses", Refusal.AGGREGATE, "json_agg"),
    ("SELECT DISTINCT ON (region) title FROM courses", Refusal.DISTINCT, "DISTINCT ON"),
    ("SELECT DISTINCT title FROM courses", Refusal.DISTINCT, "DISTINCT"),
    ("SELECT count(DISTINCT title) FROM courses", Refusal.DISTINCT, "count(DISTINCT title)"),
    ("SELECT title FROM courses ORDER BY random()", Refusal.VOLATILE, "random()"),
    ("SELECT sum(price_cents) * 2 FROM courses", Refusal.EXPRESSION, "sum(price_cents) * 2"),
    ("SELECT title FROM courses UNION SELECT name FROM users", Refusal.SHAPE, "UNION"),
    ("SELECT u.name FROM users u, courses c", Refusal.NOT_COLOCATED, "users, courses"),
    ("SELECT name FROM users WHERE user_id IN (SELECT user_id FROM enrollments LIMIT 3)",
     Refusal.NOT_COLOCATED, "enrollments"),
    ("SELECT title FROM courses WHERE price_cents > (SELECT avg(price_cents) FROM courses)",
     Refusal.NOT_COLOCATED, "courses"),
    ("SELECT title FROM courses ORDER BY title COLLATE \"de_DE\"", Refusal.ORDER, "de_DE"),
    ("SELECT title FROM courses LIMIT 2 + 3", Refusal.LIMIT, "2 + 3"),
    ("SELECT title FROM courses ORDER BY 1 FETCH FIRST 3 ROWS WITH TIES", Refusal.LIMIT, "WITH TIES"),
    ("SELECT region, count(*) FROM courses GROUP BY ROLLUP (region)", Refusal.SHAPE,
     "ROLLUP"),
    ("SELECT region FROM courses GROUP BY region HAVING region LIKE 'a%'",
     Refusal.EXPRESSION, "region LIKE 'a%'"),
])
def test_what_cannot_be_merged_exactly_is_refused_naming_the_part(
    classifier: Classifier, config: Config, sql: str, reason: Refusal, part: str
) -> None:
    err = refused(classifier, config, sql)
    assert err.reason is reason, err
    assert part in str(err), err


def test_reads_joined_on_shard_keys_and_correlated_subqueries_are_planned(
    classifier: Classifier, config: Config
) -> None:
    for sql in (
        "SELECT u.name, e.course_id FROM users u JOIN enrollments e ON e.user_id = u.user_id",
        "SELECT u.name FROM users u LEFT JOIN enrollments e USING (user_id)",
        "SELECT u.name, (SELECT count(*) FROM enrollments e WHERE e.user_id = u.user_id) "
        "FROM users u",
        "SELECT name FROM users u WHERE NOT EXISTS (SELECT 1 FROM enrollments e "
        "WHERE e.user_id = u.user_id)",
        "SELECT DISTINCT region FROM courses",
        "SELECT count(DISTINCT user_id) FROM enrollments",
        "SELECT c.title, cat.name FROM courses c JOIN categories cat USING (category_id)",
    ):
        plan(classifier, config, sql)  # no refusal


def test_an_enrollment_joined_to_its_course_is_refused(
    classifier: Classifier, config: Config
) -> None:
    """A student's enrollment may be in another region's course (README, "Enrolling across
    regions"): each shard would join its enrollments to its own courses only."""
    assert "enrollments, courses" in str(refused(
        classifier, config, "SELECT e.enrollment_id, c.title FROM enrollments e "
                            "JOIN courses c ON c.course_id = e.course_id"))


def test_text_is_merged_only_when_the_shards_compare_it_by_code_point(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT title FROM courses ORDER BY title")
    answers = [ShardRows("asia", ["title"], [("B",), ("a",)]),
               ShardRows("europe", ["title"], [("C",)])]
    assert merge(p, [], answers, [ValueOrder.TEXT], text_exact=True)[1] == [("B",), ("C",),
                                                                            ("a",)]
    with pytest.raises(ScatterRefused, match="C collation"):
        merge(p, [], answers, [ValueOrder.TEXT], text_exact=False)
    with pytest.raises(ScatterRefused, match="enum sorts by its declaration order"):
        merge(p, [], answers, [ValueOrder.EQUAL], text_exact=True)


def test_distinct_by_a_shard_key_refuses_null_keys_from_two_shards(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT DISTINCT course_id, percent_off FROM coupons")
    assert p.distinct_key == 0
    one = [ShardRows("asia", ["course_id", "percent_off"], [(None, 5)]),
           ShardRows("europe", ["course_id", "percent_off"], [(1, 5)])]
    assert len(merge(p, [], one, [ValueOrder.EXACT] * 2, text_exact=True)[1]) == 2
    two = [one[0], ShardRows("europe", ["course_id", "percent_off"], [(None, 5)])]
    with pytest.raises(ScatterRefused, match="NULL course_id came from shards asia, europe"):
        merge(p, [], two, [ValueOrder.EXACT] * 2, text_exact=True)


def test_numeric_division_has_postgresqls_scale_and_rounding() -> None:
    # Values checked against PostgreSQL: SELECT 8::numeric / 7, 1::numeric / 3 ...
    assert str(pg_numeric_div(Decimal(8), Decimal(7))) == "1.1428571428571429"
    assert str(pg_numeric_div(Decimal(1), Decimal(3))) == "0.33333333333333333333"
    assert str(pg_numeric_div(Decimal("16.26"), Decimal(6))) == "2.7100000000000000"
    assert str(pg_numeric_div(Decimal(-5), Decimal(2))) == "-2.5000000000000000"
    assert str(pg_numeric_div(Decimal(123456789), Decimal(2))) == "61728394.500000000000"


def test_a_read_not_confined_to_one_shard_becomes_a_scatter_and_a_write_does_not(
    classifier: Classifier, config: Config
) -> None:
    def kind(sql: str, *params: object, hint: str | None = None) -> object:
        return route(classifier.analyze(sql), list(params), hint, config)

    asia, europe = (new_id(config.shards[s].number) for s in ("asia", "europe"))
    every = tuple(config.shards)
    assert kind("SELECT count(*) FROM users") == Scatter(every)
    assert kind("SELECT name FROM users WHERE user_id IN ($1, $2)", asia, europe) == Scatter(
        tuple(s for s in every if s in ("asia", "europe")))  # only the shards it names
    assert kind("SELECT name FROM users WHERE user_id = $1", asia) == OneShard("asia", False)
    assert kind("SELECT name FROM users WHERE user_id = $1", asia, hint="*") == Scatter(every)
    # "*" over reference tables only (or none): each shard's copy is the same, so one answers
    # (put together, the copies came back once per shard).
    for sql in ("SELECT count(*) FROM categories", "SELECT 1", "SELECT * FROM moved_ids"):
        assert kind(sql, hint="*") == OneShard(every[0], False), sql
    for write in ("UPDATE users SET city = 'x'", "SELECT name FROM users FOR UPDATE"):
        with pytest.raises(MissingShardKeyError):
            kind(write)
        with pytest.raises(CrossShardError, match="only a read"):
            kind(write, hint="*")
    # A sharded function nothing confines still needs its shard named, as before.
    with pytest.raises(MissingShardKeyError, match="search_catalogue"):
        kind("SELECT * FROM search_catalogue($1)", "python")
    # Keys that contradict each other match no row: still refused, as before.
    with pytest.raises(CrossShardError, match="different shards"):
        kind("SELECT name FROM users WHERE user_id = $1 AND user_id = $2", asia, europe)


def test_a_shards_hint_scatters_a_read_over_just_those_shards(
    classifier: Classifier, config: Config
) -> None:
    from router.core.routing import RoutingError, UnknownShardError

    def kind(sql: str, *params: object, shards: list[str], hint: str | None = None) -> object:
        return route(classifier.analyze(sql), list(params), hint, config, shards)

    asia = new_id(config.shards["asia"].number)
    in_order = tuple(s for s in config.shards if s in ("asia", "europe"))
    # Several shards: a Scatter over them, in the configuration's order, whatever the
    # statement's own keys say (the client asked for those shards).
    assert kind("SELECT count(*) FROM users", shards=["europe", "asia"]) == Scatter(in_order)
    assert kind("SELECT name FROM users WHERE user_id = $1", asia,
                shards=["europe", "asia"]) == Scatter(in_order)
    # Reference tables only (or none): one copy answers, as for "*" (the listed shards' copies
    # put together would repeat it), on the first listed in the configuration's order.
    for sql in ("SELECT count(*) FROM categories", "SELECT 1"):
        assert kind(sql, shards=["europe", "asia"]) == OneShard(in_order[0], False), sql
    # One shard: as the hint `shard` (a write too, checked against it).
    assert kind("SELECT count(*) FROM users", shards=["asia"]) == OneShard("asia", False)
    assert kind("UPDATE users SET city = 'x' WHERE user_id = $1", asia,
                shards=["asia"]) == OneShard("asia", True)
    for write in ("UPDATE users SET city = 'x'", "SELECT name FROM users FOR UPDATE",
                  "INSERT INTO categories (name) VALUES ('x')"):
        with pytest.raises(CrossShardError, match="only a read"):
            kind(write, shards=["asia", "europe"])
    with pytest.raises(UnknownShardError, match="'mars' is not a shard") as err:
        kind("SELECT count(*) FROM users", shards=["asia", "mars"])
    assert err.value.shard == "mars"
    with pytest.raises(RoutingError, match="one of the hints"):
        kind("SELECT count(*) FROM users", shards=["asia", "europe"], hint="asia")
    with pytest.raises(RoutingError, match="one of the hints"):
        kind("SELECT count(*) FROM users", shards=["asia", "europe"], hint="*")


def test_the_shards_hint_on_the_wire() -> None:
    from protocol import Hints

    hints = Hints(shards=["asia", "europe"])
    assert hints.to_wire() == {"shards": ["asia", "europe"]}
    assert Hints.from_wire({"shards": ["asia", "europe"]}).shards == ["asia", "europe"]
    assert Hints.from_wire({"shards": None}).shards is None
    assert "shards" not in Hints().to_wire()
    for bad, why in (([], "one or more"), (["asia", "asia"], "more than once"),
                     ("asia", "expected array"), ([1], "expected str")):
        with pytest.raises(ValueError, match=f"hints.shards: .*{why}"):
            Hints.from_wire({"shards": bad})


def test_pipelined_ext_values_and_pooled_python_values_merge_as_one_kind(
    classifier: Classifier, config: Config
) -> None:
    """A pipelined part gives uuid, date and timestamp values as ext bytes, a pooled one as
    Python values (the first run of a text): they once met in one sort and raised TypeError
    (the bench's catalogue page, 2 errors in 591); and ext timestamps before 2000 are negative
    numbers whose bytes sort after the positive ones."""
    import datetime as dt
    import uuid as uuid_module

    from protocol.values import ext_default

    def ext(value: object) -> object:
        return ext_default(value)

    before, after = dt.datetime(1999, 1, 1, tzinfo=dt.UTC), dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    p = plan(classifier, config, "SELECT created_at FROM courses ORDER BY created_at")
    answers = [ShardRows("asia", ["created_at"], [(ext(before),), (ext(after),)]),
               ShardRows("europe", ["created_at"], [(dt.datetime(2000, 1, 1, tzinfo=dt.UTC),)])]
    assert [r[0] for r in merge(p, [], answers, [ValueOrder.EXACT], text_exact=True)[1]] == [
        before, dt.datetime(2000, 1, 1, tzinfo=dt.UTC), after]
    p = plan(classifier, config, "SELECT course_id FROM courses ORDER BY course_id")
    ids = sorted(uuid_module.uuid4() for _ in range(4))
    answers = [ShardRows("asia", ["course_id"], [(ext(ids[0]),), (ext(ids[2]),)]),
               ShardRows("europe", ["course_id"], [(ids[1],), (ids[3],)])]
    # uuids merge in their ext form (16 bytes in PostgreSQL's order), the pooled ones too.
    assert [r[0] for r in merge(p, [], answers, [ValueOrder.EXACT], text_exact=True)[1]] == [
        ext(i) for i in ids]
    # Grouped by uuid: a pooled part's uuid.UUID and a pipelined part's ext bytes are one group.
    p = plan(classifier, config,
             "SELECT course_id, count(*) FROM enrollments GROUP BY 1 ORDER BY 1")
    answers = [ShardRows("asia", ["course_id", "count"], [(ext(ids[0]), 2), (ext(ids[1]), 1)]),
               ShardRows("europe", ["course_id", "count"], [(ids[0], 3)])]
    assert merge(p, [], answers, [ValueOrder.EXACT, ValueOrder.EXACT], text_exact=True)[1] == [
        (ext(ids[0]), 5), (ext(ids[1]), 1)]
    # Under a HAVING, which compares values with parameters (uuid.UUID), uuids are uuid.UUID.
    p = plan(classifier, config, "SELECT course_id, count(*) FROM enrollments GROUP BY 1 "
                                 "HAVING course_id <> $1 ORDER BY 1")
    assert merge(p, [ids[1]], answers, [ValueOrder.EXACT, ValueOrder.EXACT],
                 text_exact=True)[1] == [(ids[0], 5)]
    p = plan(classifier, config, "SELECT published_at::date AS d, count(*) FROM courses GROUP BY 1")
    day = dt.date(1999, 12, 31)
    answers = [ShardRows("asia", ["d", "count"], [(ext(day), 2)]),
               ShardRows("europe", ["d", "count"], [(day, 3)])]
    assert merge(p, [], answers, [ValueOrder.EXACT, ValueOrder.EXACT],
                 text_exact=True)[1] == [(day, 5)]


def test_pipelined_parts_convert_only_the_columns_their_types_name(
    classifier: Classifier, config: Config
) -> None:
    """A pipelined part says its columns' wire types (Columns.types): its timestamps become
    Python values (their ext bytes misorder before 1970), its uuids keep their ext bytes, its
    other values are left alone; and the merge orders them as PostgreSQL does."""
    import datetime as dt
    import uuid as uuid_module

    from protocol.values import ext_default
    from router.backend.wirevalues import Columns

    ids = sorted(uuid_module.uuid4() for _ in range(3))
    old, new = dt.datetime(1960, 1, 1, tzinfo=dt.UTC), dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    p = plan(classifier, config, "SELECT course_id, created_at, title FROM courses "
                                 "ORDER BY created_at DESC, course_id LIMIT 3")
    cols = Columns(["course_id", "created_at", "title"], ["uuid", "timestamptz", "text"])
    answers = [ShardRows("asia", cols, [[ext_default(ids[2]), ext_default(new), "c"],
                                        [ext_default(ids[0]), ext_default(old), "a"]]),
               ShardRows("europe", cols, [[ext_default(ids[1]), ext_default(new), "b"]])]
    orders = [ValueOrder.EXACT, ValueOrder.EXACT, ValueOrder.TEXT]
    rows = merge(p, [], answers, orders, text_exact=True)[1]
    assert rows == [(ext_default(ids[1]), new, "b"), (ext_default(ids[2]), new, "c"),
                    (ext_default(ids[0]), old, "a")]


# ---- findings of the adversarial review of cross-shard reads (each once merged wrongly) ----


def test_an_aggregate_only_in_order_by_makes_the_read_grouped(
    classifier: Classifier, config: Config
) -> None:
    # PostgreSQL: one row (one group); once each shard's rows were concatenated (3 rows).
    p = plan(classifier, config, "SELECT 1 AS one FROM users ORDER BY count(*)")
    assert p.grouping is not None and p.grouping.keys == ()


@pytest.mark.parametrize("sql", [
    "SELECT now() FROM users",
    "SELECT count(*) FROM users GROUP BY now()",
    "SELECT user_id, current_timestamp FROM users",
    "SELECT user_id FROM users WHERE created_at < localtimestamp",
    "SELECT user_id, current_user FROM users",
    "SELECT statement_timestamp(), transaction_timestamp() FROM users",
    "SELECT user_id, current_setting('application_name') FROM users",
    "SELECT user_id FROM users WHERE created_at < 'now'::timestamptz",
    "SELECT user_id FROM users WHERE created_at < 'Today '",
])
def test_values_that_differ_per_shard_or_per_statement_are_refused(
    classifier: Classifier, config: Config, sql: str
) -> None:
    assert refused(classifier, config, sql).reason is Refusal.VOLATILE


@pytest.mark.parametrize(("sql", "part"), [
    # Text computed while the statement runs, then cast to a date or time: PostgreSQL's
    # input function reads 'now' in it as each shard's own clock (once accepted).
    ("SELECT ('no' || 'w')::timestamptz AS t FROM users", "'no' || 'w'"),
    ("SELECT user_id FROM users WHERE created_at < concat('n', 'ow')::timestamptz", "concat"),
    ("SELECT user_id FROM users WHERE created_at < $1::text::timestamptz", "CAST($1 AS text)"),
    ("SELECT user_id FROM users WHERE created_at < ('{now}'::text[])[1]::timestamptz", "[1]"),
    ("SELECT user_id FROM users WHERE created_at < ('\"now\"'::jsonb #>> '{}')::date", "#>>"),
    ("SELECT user_id FROM users WHERE created_at < timestamptz(lower('NOW'))", "timestamptz("),
    ("SELECT user_id FROM users WHERE created_at < (SELECT replace('xnow', 'x', '')::date)",
     "replace"),
    ("WITH t AS (SELECT ('no' || 'w')::timestamptz AS n) SELECT user_id FROM users, t "
     "WHERE created_at < t.n", "'no' || 'w'"),
    ("SELECT user_id FROM users WHERE created_at < CASE WHEN $1 THEN created_at "
     "ELSE $2::text::timestamptz END", "CAST($2 AS text)"),
    # The time words among other fields, in arrays, ranges and JSON.
    ("SELECT user_id FROM users WHERE created_at < 'today 10:00'::timestamptz", "today 10:00"),
    ("SELECT user_id FROM users WHERE created_at < 'yesterday allballs'", "yesterday"),
    ("SELECT user_id FROM users WHERE created_at = ANY('{now}'::timestamptz[])", "{now}"),
    ("SELECT user_id FROM users WHERE created_at <@ '[-infinity,now)'::tstzrange", "now)"),
    # Text read as values of any type, and input functions called by name.
    ("SELECT u.user_id FROM users u, jsonb_to_record($1::jsonb) AS r(x timestamptz) "
     "WHERE u.created_at < r.x", "jsonb_to_record"),
    ("SELECT user_id FROM users WHERE created_at < timestamptz_in('x', 0, -1)", "timestamptz_in"),
    # Functions that read the clock or the node themselves.
    ("SELECT user_id FROM users WHERE age(created_at) > interval '1 day'", "age(created_at)"),
    ("SELECT pg_database_size('georoute') FROM users", "pg_database_size"),
    ("SELECT pg_stat_get_numscans('users'::regclass), count(*) FROM users", "pg_stat_get_num"),
    ("SELECT txid_current_if_assigned() FROM users", "txid_current_if_assigned"),
])
def test_values_each_shard_computes_for_itself_are_refused_naming_them(
    classifier: Classifier, config: Config, sql: str, part: str
) -> None:
    err = refused(classifier, config, sql)
    assert err.reason is Refusal.VOLATILE and part in str(err), err


@pytest.mark.parametrize("sql", [
    # Dates and times computed from columns, constants and date/time parameters.
    "SELECT created_at::date, count(*) FROM users GROUP BY 1",
    "SELECT date_trunc('day', created_at)::date AS d, count(*) FROM users GROUP BY 1 ORDER BY 1",
    "SELECT (created_at + interval '1 day')::date, (created_at AT TIME ZONE 'UTC')::date "
    "FROM users",
    "SELECT user_id FROM users WHERE created_at > '2024-01-01'::date::timestamptz",
    "SELECT user_id FROM users WHERE coalesce(deactivated_at, created_at)::date > $1::date",
    "SELECT user_id FROM users WHERE created_at < $1::timestamptz",
    "SELECT age(created_at, '2020-01-01') FROM users",
    # The words in text matched as text.
    "SELECT user_id FROM users WHERE full_name LIKE '%now%' OR full_name ~* 'today'",
])
def test_dates_from_columns_constants_and_parameters_are_still_read(
    classifier: Classifier, config: Config, sql: str
) -> None:
    plan(classifier, config, sql)


@pytest.mark.parametrize("sql", [
    "SELECT min(title COLLATE \"en-x-icu\") FROM courses",
    "SELECT title FROM courses ORDER BY lower(title COLLATE \"en-x-icu\")",
    "SELECT title COLLATE \"en-x-icu\" AS t2 FROM courses ORDER BY t2",
    "SELECT title COLLATE \"de_DE\", count(*) FROM courses GROUP BY 1",
])
def test_a_collation_other_than_c_anywhere_is_refused(
    classifier: Classifier, config: Config, sql: str
) -> None:
    err = refused(classifier, config, sql)
    assert err.reason is Refusal.ORDER and "C collation" in str(err), err
    plan(classifier, config, "SELECT min(title COLLATE \"C\") FROM courses ORDER BY 1")


def test_a_set_returning_function_in_a_grouped_read_is_refused(
    classifier: Classifier, config: Config
) -> None:
    # PostgreSQL: one row per value of the series; the merge took it as a group key.
    for sql in ("SELECT count(*), generate_series(1, 2) FROM users",
                "SELECT count(*) FROM users ORDER BY unnest(ARRAY[1, 2])"):
        err = refused(classifier, config, sql)
        assert err.reason is Refusal.SHAPE and "set-returning" in str(err), err
    plan(classifier, config, "SELECT user_id, generate_series(1, 2) FROM users")  # per row


def test_the_shards_limit_for_a_limit_near_the_int8_maximum_does_not_overflow(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT title FROM courses LIMIT 9223372036854775807 OFFSET 2")
    assert p.sql.endswith("LIMIT 9223372036854775807")
    err = refused(classifier, config, "SELECT title FROM courses LIMIT 9223372036854775808")
    assert err.reason is Refusal.LIMIT and "bigint" in str(err), err  # PostgreSQL: an error
    p = plan(classifier, config, "SELECT title FROM courses LIMIT $1 OFFSET $2")
    assert p.sql.endswith("LIMIT CAST(LEAST(CAST(CAST($1 AS int8) AS numeric) + CAST(CAST($2 AS "
                          "int8) AS numeric), 9223372036854775807) AS int8)"), p.sql


def test_an_alias_after_a_star_is_sorted_by_its_expression(
    classifier: Classifier, config: Config
) -> None:
    p = plan(classifier, config, "SELECT *, price_cents AS z FROM courses ORDER BY z, course_id")
    assert p.sql.startswith("SELECT *, price_cents AS z, price_cents AS _georoute_0, "
                            "course_id AS _georoute_1 FROM courses"), p.sql


def test_a_name_that_could_meet_the_merges_hidden_columns_is_refused(
    classifier: Classifier, config: Config
) -> None:
    err = refused(classifier, config, "SELECT title AS _georoute_0 FROM courses "
                                      "ORDER BY price_cents, _georoute_0")
    assert err.reason is Refusal.SHAPE and "_georoute_0" in str(err), err


def test_an_outer_aggregate_inside_a_subquery_is_refused(
    classifier: Classifier, config: Config
) -> None:
    # PostgreSQL: count(u.user_id) is the outer query's aggregate, one row in all; once it was
    # answered per shard, one row each.
    for sql in ("SELECT (SELECT count(u.user_id)) FROM users u",
                "SELECT u.name, (SELECT max(u.name) FROM enrollments e "
                "WHERE e.user_id = u.user_id) FROM users u"):
        err = refused(classifier, config, sql)
        assert err.reason is Refusal.AGGREGATE and "subquery" in str(err), err
    for sql in ("SELECT u.name, (SELECT max(e.course_id) FROM enrollments e "
                "WHERE e.user_id = u.user_id) FROM users u",
                "SELECT u.name, (SELECT count(*) FROM enrollments e "
                "WHERE e.user_id = u.user_id) FROM users u"):
        plan(classifier, config, sql)  # the subquery's own aggregates


def test_group_by_a_bare_name_that_is_also_an_output_columns_name_is_refused(
    classifier: Classifier, config: Config
) -> None:
    # GROUP BY prefers the input column price_cents; once the output price_cents::int was taken.
    err = refused(classifier, config, "SELECT price_cents::int, count(*) FROM courses "
                                      "GROUP BY price_cents")
    assert err.reason is Refusal.SHAPE and "price_cents" in str(err), err
    p = plan(classifier, config, "SELECT price_cents, count(*) FROM courses GROUP BY price_cents")
    assert p.grouping is not None and p.grouping.keys == (0,)
    p = plan(classifier, config, "SELECT c.price_cents AS p, count(*) FROM courses c "
                                 "GROUP BY price_cents")
    assert p.grouping is not None and p.grouping.keys == (0,)


def test_having_never_reads_an_output_alias(classifier: Classifier, config: Config) -> None:
    # HAVING price_cents is the input column (a group key), not the count named price_cents.
    p = plan(classifier, config, "SELECT region, count(*) AS price_cents FROM courses "
                                 "GROUP BY region, courses.price_cents HAVING price_cents = 1")
    assert p.grouping is not None and p.grouping.having is not None
    left = p.grouping.having.left
    assert left is not None and left.column is not None
    assert p.grouping.combine[left.column] is Combine.FIRST, p
    assert "price_cents AS _georoute_" in p.sql


def test_order_by_the_name_of_an_unnamed_output_column_is_that_column(
    classifier: Classifier, config: Config
) -> None:
    # The scalar subquery's output column is named title (PostgreSQL takes its inner column's
    # name) and ORDER BY title sorts by it; once the input column title was used instead.
    p = plan(classifier, config, "SELECT c.course_id, (SELECT -c.price_cents AS title) "
                                 "FROM courses c ORDER BY title, course_id")
    assert [k.column for k in p.sort] == [1, 0] and p.hidden == 0, p
    p = plan(classifier, config, "SELECT course_id, CASE WHEN true THEN 1 END FROM courses "
                                 "ORDER BY \"case\"")
    assert [k.column for k in p.sort] == [1], p
    # A name the router cannot work out for an unnamed column: refused, not guessed.
    err = refused(classifier, config, "SELECT c.course_id, (SELECT v.* FROM (VALUES (1)) "
                                      "v(title)) FROM courses c ORDER BY title")
    assert err.reason is Refusal.ORDER and "title" in str(err), err
    err = refused(classifier, config, "SELECT title AS x, region AS x FROM courses ORDER BY x")
    assert err.reason is Refusal.ORDER and "ambiguous" in str(err), err
    p = plan(classifier, config, "SELECT count(*) AS n, region FROM courses GROUP BY region "
                                 "ORDER BY n DESC, region")
    assert [k.column for k in p.sort] == [0, 1]


def test_an_outer_join_keeping_rows_of_a_side_with_no_sharded_table_is_refused(
        classifier: Classifier, config: Config) -> None:
    """A reference table (or VALUES, a function) is on every shard: an outer join that keeps
    its unmatched rows had each shard keep those its own rows did not match, and the merge
    added them up (a category with courses on one shard came back with NULLs from the two
    others, one with none came back three times)."""
    for sql in (
        "SELECT c.name, co.title FROM categories c LEFT JOIN courses co "
        "ON co.category_id = c.category_id",
        "SELECT count(*) FROM courses co RIGHT JOIN categories c ON co.category_id = "
        "c.category_id",
        "SELECT count(*) FROM categories c FULL JOIN courses co ON co.category_id = "
        "c.category_id",
        "SELECT v.id, u.email FROM (VALUES ($1::uuid)) v(id) LEFT JOIN users u "
        "ON u.user_id = v.id",
        "SELECT g, count(u.user_id) FROM generate_series(1, 3) g LEFT JOIN "
        "(users u JOIN enrollments e ON e.user_id = u.user_id) ON u.user_id IS NULL GROUP BY g",
    ):
        err = refused(classifier, config, sql)
        assert err.reason is Refusal.NOT_COLOCATED and "outer join" in str(err), sql
    # The preserved side holds a sharded table: each kept row lives on one shard.
    for sql in ("SELECT co.title, c.name FROM courses co LEFT JOIN categories c "
                "ON c.category_id = co.category_id",
                "SELECT c.name, co.title FROM categories c JOIN courses co "
                "ON co.category_id = c.category_id",
                "SELECT u.email, e.status FROM users u LEFT JOIN enrollments e "
                "ON e.user_id = u.user_id"):
        plan(classifier, config, sql)
