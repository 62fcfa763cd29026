"""The confinement rule, pure: a statement goes to one shard only when every sharded table it
reads or writes is confined to that shard (router/core/confinement.py, routing.resolve_shards).

The cases are issue #12's, each once answered from one shard as if it were all of them (or a
write applied to a third of its rows); the property tests nest subqueries, EXISTS, UNION
branches, CTEs and joins at random, with keys in and out of each reference's scope."""

from __future__ import annotations

import itertools
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import load_config
from router.core.classify import SqlParseError, UnsupportedStatementError
from router.core.ids import new_id
from router.core.routing import (
    CrossShardError,
    MissingShardKeyError,
    OneShard,
    RoutingError,
    keyed_shard,
    resolve_shards,
)
from router.engine.classifier import Classifier

CONFIG = load_config(Path(__file__).resolve().parents[2] / "router.toml")
SHARDS = tuple(CONFIG.shards)
ID = {name: new_id(CONFIG.shards[name].number, now_ms=1, rand=bytes(9)) for name in SHARDS}
EU, ASIA = ID["europe"], ID["asia"]
CLASSIFIER = Classifier(CONFIG.tables, CONFIG.router.read_only_functions, cache_size=64,
                        sharded_functions=CONFIG.router.sharded_functions)


def route(sql: str, *params: object, hint: str | None = None) -> OneShard:
    return resolve_shards(CLASSIFIER.analyze(sql), list(params), hint, CONFIG)


# ---- issue #12's cases: each was routed to one shard; each must be refused -----------------

UNCONFINED = [
    # A key in a subquery's scope says nothing of the outer scan.
    ("SELECT count(*) FROM users WHERE full_name = $2 AND created_at >= "
     "(SELECT created_at FROM users WHERE user_id = $1)", [EU, "x"]),
    ("SELECT user_id FROM users WHERE user_id = $1 UNION ALL "
     "SELECT user_id FROM users WHERE full_name = $2", [EU, "x"]),
    ("SELECT * FROM users WHERE full_name = $2 AND (country = 'US' OR user_id IN "
     "(SELECT user_id FROM users WHERE user_id = $1))", [EU, "x"]),
    ("SELECT * FROM users u WHERE u.full_name = $2 AND NOT EXISTS "
     "(SELECT 1 FROM enrollments e WHERE e.user_id = $1)", [EU, "x"]),
    ("WITH k AS (SELECT * FROM users WHERE user_id = $1) "
     "SELECT * FROM k JOIN users u ON u.full_name = k.full_name", [EU]),
    ("SELECT (SELECT count(*) FROM users), (SELECT email FROM users WHERE user_id = $1)", [EU]),
    # A region inside a function call other than a sharded function's routes nothing.
    ("SELECT count(*) FROM users WHERE home_region <> lower($1)", ["europe"]),
    # Sharded functions that name no shard by their arguments.
    ("SELECT * FROM revenue_report($1, $2)", ["2020-01-01", "2030-01-01"]),
    ("SELECT enrollment_statistics($1, $2)", ["2020-01-01", "2030-01-01"]),
    ("SELECT * FROM search_catalogue($1)", ["python"]),
    # A value shaped like an id in a column that is not a shard key.
    ("SELECT * FROM audit_log WHERE action = $1", [str(EU)]),
    ("SELECT * FROM audit_log WHERE actor_id = $1", [EU]),
    # Writes that would change one shard's matching rows only.
    ("UPDATE users SET city = 'x' WHERE full_name = $2 AND EXISTS "
     "(SELECT 1 FROM courses WHERE course_id = $1)", [EU, "x"]),
    ("UPDATE users SET city = 'x' WHERE full_name = $2 AND home_region <> lower($1)",
     ["europe", "x"]),
    ("WITH u AS (UPDATE audit_log SET action = 'x' WHERE entity = 'e' RETURNING 1) "
     "SELECT * FROM audit_log WHERE region = $1", ["europe"]),
    ("MERGE INTO audit_log a USING (SELECT $1::uuid AS id) s ON a.audit_id = s.id "
     "WHEN MATCHED THEN UPDATE SET action = 'x'", [EU]),
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 "
     "WHEN NOT MATCHED BY SOURCE THEN DELETE", [EU]),
    ("MERGE INTO audit_log a USING audit_log s ON a.audit_id = s.audit_id AND a.audit_id = $1 "
     "WHEN MATCHED THEN DELETE", [EU]),
    # An outer join's ON filters only its nullable side.
    ("SELECT * FROM courses c LEFT JOIN enrollments e ON e.course_id = c.course_id "
     "AND e.user_id = $1", [EU]),
    ("SELECT * FROM users u FULL JOIN enrollments e ON e.user_id = u.user_id AND u.user_id = $1",
     [EU]),
    # A key in another table's subquery, correlated or not, does not pin the outer one.
    ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM audit_log a "
     "WHERE a.region = $1 AND u.full_name = 'x')", ["europe"]),
    ("SELECT * FROM users u WHERE EXISTS (SELECT 1 FROM courses c WHERE user_id = $1)", [EU]),
    # A course's id says where the course is, not where its enrollments (or their progress,
    # payments and reviews) are: students of every region may hold them.
    ("UPDATE enrollments SET status = 'cancelled' WHERE course_id = $1", [EU]),
    ("DELETE FROM reviews WHERE course_id = $1", [EU]),
    ("UPDATE lesson_progress SET seconds_spent = 0 WHERE lesson_id = $1", [EU]),
    ("UPDATE enrollments e SET status = 'x' FROM courses c "
     "WHERE e.course_id = c.course_id AND c.course_id = $1", [EU]),
]


@pytest.mark.parametrize(("sql", "params"), UNCONFINED)
def test_unconfined_statements_are_refused(sql: str, params: list[object]) -> None:
    with pytest.raises(MissingShardKeyError):
        route(sql, *params)


@pytest.mark.parametrize("hint", [None, "europe"])
@pytest.mark.parametrize(("sql", "params"), [
    ("UPDATE categories SET name = $2 WHERE category_id = $1", [EU, "x"]),
    ("INSERT INTO categories (slug, name) SELECT full_name, email FROM users "
     "WHERE user_id = $1", [EU]),  # confined by its read of users: still one copy only
    ("WITH c AS (DELETE FROM categories RETURNING 1) SELECT * FROM users WHERE user_id = $1",
     [EU]),
])
def test_a_reference_table_write_is_never_routed_to_one_shard(
    sql: str, params: list[object], hint: str | None
) -> None:
    """Each shard has a copy: a write to one copy would let them drift apart (the executor
    sends such a write to every shard, in one two-phase commit)."""
    with pytest.raises(CrossShardError, match="categories is a reference table"):
        route(sql, *params, hint=hint)


ROWS_ELSEWHERE = [
    # Rows that name another shard than the one the statement runs on.
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 "
     "WHEN MATCHED THEN UPDATE SET region = 'asia'", [EU]),
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 "
     "WHEN NOT MATCHED THEN INSERT (region, action, entity) VALUES ('asia', 'a', 'b')", [EU]),
    ("INSERT INTO audit_log (region, action, entity) "
     "SELECT 'asia', action, entity FROM audit_log WHERE audit_id = $1", [EU]),
    ("WITH n AS (INSERT INTO audit_log (region, action, entity) VALUES ('asia', 'a', 'b') "
     "RETURNING 1) SELECT * FROM users WHERE user_id = $1", [EU]),
    ("INSERT INTO enrollments (enrollment_id, user_id) VALUES ($1, $2)", [EU, ASIA]),
    ("INSERT INTO users (user_id, home_region) VALUES ($1, 'europe'), ($2, 'asia')", [EU, ASIA]),
    ("INSERT INTO users (home_region, email) VALUES (lower($1), 'a@b.c')", ["EUROPE"]),
    ("INSERT INTO users VALUES ($1, 'a@b.c')", [EU]),
    ("INSERT INTO users (user_id, email) SELECT $1, 'a' UNION ALL SELECT $2, 'b'", [EU, EU]),
]


@pytest.mark.parametrize(("sql", "params"), ROWS_ELSEWHERE)
def test_rows_written_must_land_on_the_shard_their_key_names(sql: str,
                                                             params: list[object]) -> None:
    with pytest.raises(CrossShardError):
        route(sql, *params)


def test_a_hint_does_not_let_a_row_land_on_another_shard() -> None:
    """A hint chooses the shard; it cannot put a row where its key says it does not live."""
    insert = "INSERT INTO audit_log (region, action, entity) VALUES ($1, 'a', 'b')"
    with pytest.raises(CrossShardError, match="europe"):
        route(insert, "asia", hint="europe")
    assert route(insert, "europe", hint="europe").shard == "europe"
    with pytest.raises(CrossShardError):
        route("INSERT INTO users (user_id, email) VALUES ($1, 'a')", ASIA, hint="europe")
    # A read under a hint asks that shard, as the client said.
    assert route("SELECT count(*) FROM users", hint="asia").shard == "asia"


CONFINED = [
    ("SELECT * FROM users WHERE user_id = $1", [EU]),
    ("SELECT * FROM users u JOIN enrollments e ON e.user_id = u.user_id WHERE u.user_id = $1",
     [EU]),
    ("SELECT * FROM users u, enrollments e WHERE e.user_id = u.user_id AND e.enrollment_id = $1",
     [EU]),
    ("SELECT * FROM coupons k JOIN courses c USING (course_id) WHERE k.course_id = $1", [EU]),
    ("SELECT * FROM users u LEFT JOIN enrollments e ON e.user_id = u.user_id "
     "WHERE u.user_id = $1", [EU]),
    ("SELECT * FROM users u WHERE u.user_id = $1 AND NOT EXISTS "
     "(SELECT 1 FROM enrollments e WHERE e.user_id = u.user_id)", [EU]),
    ("SELECT u.*, (SELECT count(*) FROM enrollments e WHERE e.user_id = u.user_id) "
     "FROM users u WHERE u.user_id = $1", [EU]),
    ("SELECT * FROM courses c WHERE c.course_id IN "
     "(SELECT k.course_id FROM coupons k WHERE k.coupon_id = $1)", [EU]),
    ("SELECT * FROM users u WHERE u.user_id = $1 AND u.user_id IN "
     "(SELECT e.user_id FROM enrollments e)", [EU]),
    ("WITH mine AS (SELECT * FROM enrollments WHERE user_id = $1) SELECT * FROM mine", [EU]),
    ("SELECT user_id FROM users WHERE user_id = $1 UNION SELECT user_id FROM enrollments "
     "WHERE enrollment_id = $2", [EU, EU]),
    ("SELECT * FROM users WHERE user_id IN ($1, $2)", [EU, EU]),
    ("SELECT * FROM users WHERE user_id = ANY($1)", [[EU, EU]]),
    ("SELECT * FROM users WHERE home_region = 'europe'", []),
    ("SELECT enroll($1, $2)", [EU, EU]),
    ("SELECT * FROM course_statistics($1)", [EU]),
    ("SELECT course_progress(e.enrollment_id) FROM enrollments e WHERE e.enrollment_id = $1",
     [EU]),
    ("UPDATE coupons k SET code = 'x' FROM courses c "
     "WHERE k.course_id = c.course_id AND c.course_id = $1", [EU]),
    # An enrollment lives on its student's shard, its course perhaps on another: only the
    # student's key places it (README, "Enrolling across regions").
    ("INSERT INTO enrollments (user_id, course_id) VALUES ($1, $2)", [EU, ASIA]),
    ("SELECT * FROM enrollments WHERE user_id = $1 AND course_id = $2", [EU, ASIA]),
    ("DELETE FROM lesson_progress lp USING enrollments en "
     "WHERE lp.enrollment_id = en.enrollment_id AND en.user_id = $1", [EU]),
    ("INSERT INTO certificates (certificate_id, enrollment_id) "
     "SELECT georoute_id(), enrollment_id FROM enrollments WHERE enrollment_id = $1", [EU]),
    ("INSERT INTO users (user_id, home_region) VALUES ($1, 'europe'), ($2, $3)",
     [EU, EU, "europe"]),
    ("MERGE INTO audit_log a USING (SELECT 1) s ON a.audit_id = $1 "
     "WHEN MATCHED THEN UPDATE SET action = 'x' "
     "WHEN NOT MATCHED THEN INSERT (region, action, entity) VALUES ('europe', 'a', 'b')", [EU]),
    ("EXPLAIN SELECT * FROM users WHERE user_id = $1", [EU]),
]


@pytest.mark.parametrize(("sql", "params"), CONFINED)
def test_confined_statements_go_to_their_shard(sql: str, params: list[object]) -> None:
    assert route(sql, *params).shard == "europe"


def test_keys_naming_several_shards_are_cross_shard() -> None:
    for sql, params in (
        ("SELECT * FROM users WHERE user_id IN ($1, $2)", [EU, ASIA]),
        ("SELECT * FROM users WHERE user_id = ANY($1)", [[EU, ASIA]]),
        ("SELECT * FROM users WHERE user_id = $1 UNION ALL SELECT * FROM users "
         "WHERE user_id = $2", [EU, ASIA]),
        ("SELECT enroll($1, $2)", [EU, ASIA]),
    ):
        with pytest.raises(CrossShardError):
            route(sql, *params)


def test_a_transaction_or_hint_takes_only_what_names_a_shard() -> None:
    """Inside a transaction (begun on a shard) the statement's own keys must not name another
    shard; references nothing confines run on the transaction's shard, as under a hint."""
    a = CLASSIFIER.analyze("SELECT count(*) FROM users WHERE full_name = $1")
    assert keyed_shard(a, ["x"], CONFIG) is None
    a = CLASSIFIER.analyze("SELECT * FROM users u WHERE u.full_name = $2 AND EXISTS "
                           "(SELECT 1 FROM enrollments e WHERE e.user_id = $1)")
    assert keyed_shard(a, [ASIA, "x"], CONFIG) == "asia"


def test_writable_cte_counts_as_a_write_whatever_its_status() -> None:
    a = CLASSIFIER.analyze("WITH a AS (INSERT INTO audit_log (region, action, entity) VALUES "
                           "('europe', 'a', 'b') RETURNING 1) UPDATE users SET city = 'x' "
                           "WHERE user_id = $1 AND false")
    assert not a.read_only


@pytest.mark.parametrize("sql", [
    "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
    "CREATE DOMAIN pg_temp.d AS int",
    "CREATE TYPE pg_temp.t AS (a int)",
    "CREATE TYPE pg_temp.e AS ENUM ('a')",
    "CREATE OPERATOR pg_temp.=== (function = int4eq, leftarg = int, rightarg = int)",
    "SELECT 1::pg_temp.d",
])
def test_every_pg_temp_object_is_session_state(sql: str) -> None:
    assert CLASSIFIER.analyze(sql).changes_session_state


# ---- property tests: random nesting, keys in and out of scope --------------------------------

# (table, shard key, another column): the other column never confines anything.
TABLES = [("users", "user_id", "full_name"), ("courses", "course_id", "title"),
          ("enrollments", "enrollment_id", "status"), ("reviews", "review_id", "body")]
WHERE_KEY = ["own", "none", "under_or", "under_not", "in_subquery_of_other"]


@dataclass(frozen=True)
class Query:
    sql: str
    confined: bool  # every sharded reference in it is pinned, by the rule
    shards: frozenset[str]


@st.composite
def queries(draw: st.DrawFn, depth: int, names: itertools.count[int]) -> Query:
    """A SELECT of one key column, over one table (maybe joined), with nested parts."""
    table, key, other = draw(st.sampled_from(TABLES))
    alias = f"t{next(names)}"
    shard = draw(st.sampled_from(SHARDS))
    ident = f"'{ID[shard]}'"
    placement = draw(st.sampled_from(WHERE_KEY))
    conds = [f"{alias}.{other} = 'x'"]
    pinned = placement == "own"
    if placement == "own":
        conds.append(f"{alias}.{key} = {ident}")
    elif placement == "under_or":
        conds.append(f"({alias}.{key} = {ident} OR {alias}.{other} = 'y')")
    elif placement == "under_not":
        conds.append(f"NOT ({alias}.{key} <> {ident})")
    elif placement == "in_subquery_of_other":  # the key sits in another scope
        conds.append(f"EXISTS (SELECT 1 FROM categories k WHERE {alias}.{key} = {ident})")
    confined, shards = pinned, {shard} if pinned else set()
    from_sql = f"{table} {alias}"
    if table == "users" and draw(st.booleans()):  # a join on the shard key
        joined = f"j{next(names)}"
        kind = draw(st.sampled_from(["JOIN", "LEFT JOIN", "FULL JOIN"]))
        from_sql += f" {kind} enrollments {joined} ON {joined}.user_id = {alias}.user_id"
        # Inner and left: the joined rows match a confined user's key. Full: nothing filtered.
        confined = confined and kind != "FULL JOIN"
    if depth > 0:
        for part in draw(st.lists(st.sampled_from(["exists", "not_exists", "scalar", "in"]),
                                  max_size=2)):
            child = draw(queries(depth - 1, names))
            confined = confined and child.confined
            shards |= child.shards
            if part == "exists":
                conds.append(f"EXISTS ({child.sql})")
            elif part == "not_exists":
                conds.append(f"NOT EXISTS ({child.sql})")
            elif part == "scalar":
                conds.append(f"{alias}.{other} <> ({child.sql} LIMIT 1)::text")
            else:
                conds.append(f"{alias}.{other}::uuid IN ({child.sql})")
    sql = f"SELECT {alias}.{key} FROM {from_sql} WHERE {' AND '.join(conds)}"
    return Query(sql, confined, frozenset(shards))


@st.composite
def statements(draw: st.DrawFn) -> Query:
    names = itertools.count()
    first = draw(queries(2, names))
    shape = draw(st.sampled_from(["plain", "union", "cte", "cte_unused"]))
    if shape == "plain":
        return first
    second = draw(queries(1, names))
    both = Query("", first.confined and second.confined, first.shards | second.shards)
    if shape == "union":
        return Query(f"({first.sql}) UNION ALL ({second.sql})", both.confined, both.shards)
    if shape == "cte":
        sql = f"WITH c AS ({first.sql}) SELECT * FROM c UNION ALL ({second.sql})"
        return Query(sql, both.confined, both.shards)
    # A CTE no one reads still runs (PostgreSQL evaluates a data-modifying one; a plain one
    # is simply unused): its references count the same.
    return Query(f"WITH c AS ({first.sql}) {second.sql}", both.confined, both.shards)


@settings(max_examples=300, deadline=None)
@given(statements())
def test_random_nesting_routes_to_one_shard_only_when_every_reference_is_confined(
    query: Query,
) -> None:
    analysis = CLASSIFIER.analyze(query.sql)
    try:
        target = resolve_shards(analysis, [], None, CONFIG)
    except RoutingError as refused:
        assert not (query.confined and len(query.shards) == 1), (query.sql, refused)
        if not query.confined:
            assert isinstance(refused, MissingShardKeyError), query.sql
        return
    assert query.confined, f"routed an unconfined statement to {target.shard}: {query.sql}"
    assert {target.shard} == set(query.shards), query.sql


@settings(max_examples=200, deadline=None)
@given(statements(), st.sampled_from(SHARDS))
def test_writes_wrapping_random_reads_follow_the_same_rule(query: Query, region: str) -> None:
    """The same reads as the source of an INSERT ... SELECT and inside an UPDATE's WHERE."""
    update = (f"UPDATE users SET city = 'x' WHERE user_id = '{ID[region]}' "
              f"AND city IN (SELECT v::text FROM ({query.sql}) AS q(v))")
    confined = query.confined
    shards = query.shards | {region}
    try:
        target = route(update)
    except RoutingError:
        assert not (confined and len(shards) == 1), update
        return
    assert confined and {target.shard} == set(shards), update


# ---- an adversarial review's findings: each was routed to one shard, or crashed --------------

REVIEWED_UNCONFINED = [
    # A CTE named like the table an UPDATE/DELETE/MERGE writes does not hide the table.
    ("WITH enrollments AS (SELECT * FROM enrollments WHERE user_id = $1) "
     "UPDATE enrollments SET status = 'cancelled'", [EU]),
    ("WITH enrollments AS (SELECT * FROM enrollments WHERE user_id = $1) DELETE FROM enrollments",
     [EU]),
    # A free-text argument of a sharded function that reads like a region names nothing.
    ("SELECT * FROM search_catalogue($1)", ["asia"]),
    ("SELECT course_id, title FROM search_catalogue(p_query => $1, p_limit => 50)", ["europe"]),
    # DISTINCT ON inside an IN: the subquery's answer depends on rows of every shard.
    ("SELECT u.user_id FROM users u WHERE u.user_id = $1 AND u.user_id IN (SELECT DISTINCT ON "
     "(e.status) e.user_id FROM enrollments e ORDER BY e.status, e.enrolled_at)", [EU]),
    # An IN subquery whose output is an outer query's column filters nothing of it.
    ("SELECT u.user_id, e.enrollment_id FROM users u LEFT JOIN enrollments e "
     "ON e.enrollment_id = $1 AND e.user_id IN (SELECT u.user_id)", [EU]),
    ("SELECT o.user_id FROM users o WHERE NOT EXISTS (SELECT 1 FROM enrollments e "
     "WHERE e.enrollment_id = $1 AND e.user_id IN (SELECT o.user_id))", [EU]),
    # Column alias lists rename the columns: a.audit_id here is actor_id.
    ("SELECT a.audit_id FROM audit_log AS a(id, region, at, audit_id) WHERE a.audit_id = $1",
     [EU]),
    ("SELECT e.eid FROM enrollments AS e(eid, uid), (VALUES ($1::uuid)) v(user_id) "
     "WHERE user_id = $1", [EU]),
    # Names PostgreSQL hides resolve to the outer query: a table inside an aliased join, an
    # earlier FROM item seen from a non-LATERAL subquery.
    ("SELECT e.enrollment_id, (SELECT count(*) FROM (enrollments e JOIN courses c "
     "ON c.course_id = e.course_id) AS j WHERE e.user_id = $1) FROM enrollments e "
     "WHERE e.user_id = $1", [EU]),
    ("SELECT (SELECT max(s.n) FROM users u, (SELECT count(*) AS n FROM enrollments e2 "
     "WHERE e2.user_id = u.user_id) s WHERE u.user_id = $1) FROM (VALUES ($2::uuid)) u(user_id)",
     [EU, ASIA]),
    # A cast may cut the key: the first 8 characters of an id are its timestamp.
    ("SELECT course_id FROM courses WHERE course_id::varchar(8) = $1::varchar(8)", [EU]),
    ("SELECT user_id FROM users WHERE user_id = $1::varchar(13)", [EU]),
    # georoute's own per-shard tables are not reference tables.
    ("SELECT reply FROM georoute_idempotency WHERE idem_key = $1", ["k"]),
]


@pytest.mark.parametrize(("sql", "params"), REVIEWED_UNCONFINED)
def test_reviewed_statements_are_refused(sql: str, params: list[object]) -> None:
    with pytest.raises(MissingShardKeyError):
        route(sql, *params)


REVIEWED_ROWS = [
    # An INSERT into a table a same-named CTE shadows for reads still writes the table.
    ("WITH audit_log AS (SELECT * FROM audit_log WHERE region = $1) INSERT INTO audit_log "
     "(audit_id, region, action, entity) VALUES ($2, $3, 'x', 'y')", ["europe", ASIA, "asia"],
     None),
    ("WITH audit_log AS (SELECT 1) INSERT INTO audit_log (region, action, entity) "
     "VALUES ('asia', 'x', 'y')", [], "europe"),
    # With the target aliased, audit_log.region is another FROM item's column.
    ("UPDATE audit_log a SET region = audit_log.region FROM (VALUES ('asia')) "
     "AS audit_log(region) WHERE a.audit_id = $1", [EU], None),
    ("MERGE INTO audit_log a USING (VALUES ('asia')) AS audit_log(region) ON a.audit_id = $1 "
     "WHEN MATCHED THEN UPDATE SET region = audit_log.region", [EU], None),
    # A unique index holds per shard: a conflict on email could be another shard's user.
    ("INSERT INTO users (user_id, email, home_region) VALUES ($1, $2, 'europe') "
     "ON CONFLICT ((lower(email))) DO UPDATE SET city = excluded.city", [EU, "a@b.c"], None),
    ("INSERT INTO users (user_id, email, home_region) VALUES ($1, $2, 'europe') "
     "ON CONFLICT DO NOTHING", [EU, "a@b.c"], None),
]


@pytest.mark.parametrize(("sql", "params", "hint"), REVIEWED_ROWS)
def test_reviewed_writes_cannot_misplace_rows(sql: str, params: list[object],
                                              hint: str | None) -> None:
    with pytest.raises(CrossShardError):
        route(sql, *params, hint=hint)


def test_upserts_on_a_shard_key_and_defaults_still_route() -> None:
    sql = ("INSERT INTO users (user_id, email, home_region) VALUES ($1, $2, 'europe') "
           "ON CONFLICT (user_id) DO UPDATE SET email = excluded.email")
    assert route(sql, EU, "a@b.c").shard == "europe"
    sql = ("MERGE INTO users t USING (SELECT 1) s ON t.user_id = $1 "
           "WHEN NOT MATCHED THEN INSERT DEFAULT VALUES")
    assert route(sql, EU).shard == "europe"
    assert route("SELECT * FROM users WHERE user_id IS NOT DISTINCT FROM $1", EU).shard == "europe"
    assert route("SELECT create_course($1, $2, 'T', 0)", EU, ASIA).shard == "europe"


@pytest.mark.parametrize("sql", [
    "UPDATE users SET (city, country, home_region) = ROW($1, $2) WHERE user_id = $3",
    "SELECT " + "(SELECT " * 400 + "1" + ")" * 400,
    "SELECT * FROM users WHERE " + "(" * 1300 + "user_id = $1" + " AND true)" * 1300,
    "SELECT * FROM users WHERE user_id = $1" + "::uuid" * 1300,
])
def test_odd_or_deep_statements_get_a_typed_answer(sql: str) -> None:
    """Each raised IndexError or RecursionError inside the analysis (an INTERNAL error)."""
    try:
        route(sql, "a", "b", EU)
    except (RoutingError, SqlParseError):
        pass


def test_copy_is_refused() -> None:
    with pytest.raises(UnsupportedStatementError, match="COPY"):
        CLASSIFIER.analyze("COPY audit_log (region, action, entity) FROM PROGRAM 'echo'")


def _batch_shard(statements: Sequence[tuple[str, Sequence[object]]],
                 hint: str | None = None) -> str:
    from protocol.messages import Hints
    from router.engine.executor import Executor

    executor = types.SimpleNamespace(config=CONFIG, shard_for_key=None)
    analyses = [CLASSIFIER.analyze(sql) for sql, _ in statements]
    return Executor._batch_shard(executor, analyses, statements, Hints(shard=hint))  # type: ignore[arg-type]


def test_a_batch_is_confined_statement_by_statement() -> None:
    keyed = ("SELECT * FROM users WHERE user_id = $1", [EU])
    assert _batch_shard([keyed, ("SELECT 1", [])]) == "europe"
    with pytest.raises(MissingShardKeyError):
        _batch_shard([keyed, ("UPDATE users SET city = 'x' WHERE full_name = $1", ["x"])])
    # a reference table's copy on one shard only: the copies would drift apart
    reference: tuple[str, list[object]] = (
        "UPDATE categories SET name = 'X' WHERE slug = 'prog'", [])
    for hint in (None, "europe"):
        with pytest.raises(CrossShardError, match="categories is a reference table"):
            _batch_shard([keyed, reference], hint=hint)
    with pytest.raises(CrossShardError):
        _batch_shard([keyed, ("INSERT INTO audit_log (region, action, entity) "
                              "VALUES ('asia', 'a', 'b')", [])])
    with pytest.raises(CrossShardError):  # a hint does not place a row on another shard
        _batch_shard([("INSERT INTO audit_log (region, action, entity) "
                       "VALUES ('asia', 'a', 'b')", [])], hint="europe")


# ---- an adversarial review (2026-12-04) -------------------------------------------------------

def test_is_not_distinct_from_between_keys_joins_nothing() -> None:
    """`a.key IS NOT DISTINCT FROM b.key` matches NULL with NULL, and a NULL key (a coupon
    for any course) is on every shard: it confines nothing, unlike `=`. Once it was taken as a
    join, and the read answered from one shard (or merged per shard) missed the other shards'
    NULL-keyed rows it would have met in one database."""
    from router.core.routing import Scatter, route
    from router.core.scatter_plan import ScatterRefused
    from router.core.scatter_rewrite import plan_scatter

    sql = ("SELECT count(*) FROM coupons a JOIN coupons b "
           "ON b.course_id IS NOT DISTINCT FROM a.course_id WHERE a.coupon_id = $1")
    analysis = CLASSIFIER.analyze(sql)
    routed = route(analysis, [EU], None, CONFIG)
    assert isinstance(routed, Scatter)  # b is not confined: every shard's coupons count
    with pytest.raises(ScatterRefused, match="coupons"):
        plan_scatter(sql, analysis.confinement, CONFIG.tables)
    # the NULL-safe equality with a value still pins (a NULL value names no shard)
    assert route_one("SELECT * FROM coupons WHERE coupon_id IS NOT DISTINCT FROM $1",
                     EU) == "europe"
    # and `=` still joins: NULL = NULL is not true
    assert route_one("SELECT count(*) FROM coupons a JOIN coupons b ON b.course_id = "
                     "a.course_id WHERE a.coupon_id = $1", EU) == "europe"


def route_one(sql: str, *params: object) -> str:
    return route(sql, *params).shard


@pytest.mark.parametrize("sql", [
    "SELECT currval('invoice_number_seq')", "SELECT lastval()",
    "SELECT pg_catalog.currval($1)", "SELECT * FROM users WHERE user_id = $1 AND 1 = lastval()",
    "INSERT INTO audit_log (action, entity, details) VALUES ('a', 'b', "
    "jsonb_build_object('n', currval('s')))",
])
def test_reads_of_the_sessions_last_sequence_value_are_refused(sql: str) -> None:
    """currval()/lastval() answer from the backend session, which the router shares between
    clients: another client's nextval (or an invoice trigger's) would be the answer."""
    with pytest.raises(UnsupportedStatementError, match="another client"):
        CLASSIFIER.analyze(sql)
    CLASSIFIER.analyze("SELECT nextval('s')")  # its own value is its own
    CLASSIFIER.analyze("SELECT myschema.currval('s')")  # another function


def test_setseed_is_session_state() -> None:
    """setseed() fixes the backend session's random() sequence: left on a shared connection,
    every later client's random() there would be predictable from the seed."""
    assert CLASSIFIER.analyze("SELECT setseed($1)").changes_session_state
    assert CLASSIFIER.analyze("SELECT pg_catalog.setseed(0.5)").changes_session_state
    assert not CLASSIFIER.analyze("SELECT random()").changes_session_state


def test_a_reference_write_returns_the_rows_it_writes_to_compare_the_copies() -> None:
    from router.core.reference import WRITTEN_ROW, compared_write

    sql, own = compared_write("UPDATE categories c SET name = $2 WHERE category_id = $1 "
                              "RETURNING c.name", CONFIG.tables)
    assert own and sql.endswith(f"RETURNING pg_catalog.to_jsonb(c.*) AS {WRITTEN_ROW}, c.name")
    sql, own = compared_write("INSERT INTO categories (slug, name) VALUES ($1, 'x')",
                              CONFIG.tables)
    assert not own and sql.endswith(f"RETURNING pg_catalog.to_jsonb(categories.*) AS "
                                    f"{WRITTEN_ROW}")
    assert compared_write("TRUNCATE categories", CONFIG.tables) == ("TRUNCATE categories",
                                                                    False)
    with pytest.raises(CrossShardError, match="inside a WITH"):
        compared_write("WITH d AS (DELETE FROM categories RETURNING 1) SELECT count(*) FROM d",
                       CONFIG.tables)
