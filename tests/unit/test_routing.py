"""Pure routing decisions: classification corpus, shard resolution, ids, node health (the read
decision is tests/unit/test_reads.py)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from router.config import load_config
from router.core import ids
from router.core.classify import (
    INLINE_PARSE_MAX,
    Analysis,
    KeyKind,
    SqlParseError,
    UnsupportedStatementError,
)
from router.core.health import HealthEvent, NodeHealth, next_health
from router.core.ids import shard_number_of
from router.core.routing import (
    CrossShardError,
    MissingShardKeyError,
    OneShard,
    UnknownShardError,
    resolve_shards,
)
from router.engine.classifier import Classifier
from tests.support.ids import new_id

CONFIG = load_config(Path(__file__).resolve().parents[2] / "router.toml")
NA, EU, ASIA = (CONFIG.shards[n].number for n in ("north_america", "europe", "asia"))


@pytest.fixture
def classifier() -> Classifier:
    return Classifier(CONFIG.tables, CONFIG.router.read_only_functions, cache_size=8,
                      sharded_functions=CONFIG.router.sharded_functions)


READS = [
    "SELECT * FROM users WHERE user_id = $1",
    "SELECT count(*), lower(title) FROM courses WHERE region = $1 GROUP BY 2",
    "WITH recent AS (SELECT * FROM enrollments WHERE user_id = $1) SELECT * FROM recent",
    "SELECT c.title FROM courses c JOIN lessons l ON l.course_id = c.course_id WHERE c.course_id=$1",
    "SELECT 1",
    "SELECT * FROM categories ORDER BY name",
    "SELECT course_statistics($1)",
    "SELECT * FROM users WHERE user_id = $1 UNION ALL SELECT * FROM users WHERE user_id = $2",
    "SELECT pg_catalog.count(*) FROM users WHERE user_id = $1",
]
WRITES = [
    "INSERT INTO users (user_id, email, home_region) VALUES ($1, $2, $3)",
    "UPDATE lesson_progress SET completed = true WHERE enrollment_id = $1",
    "DELETE FROM reviews WHERE review_id = $1",
    "SELECT * FROM users WHERE user_id = $1 FOR UPDATE",
    "SELECT * FROM users WHERE user_id = $1 FOR SHARE SKIP LOCKED",
    "WITH d AS (DELETE FROM reviews WHERE review_id = $1 RETURNING *) SELECT * FROM d",
    "SELECT enroll($1, $2)",
    "SELECT nextval('some_seq')",
    "SELECT * INTO new_table FROM users",
    "CREATE TABLE t (a int)",
    "SET search_path TO public",
    "MERGE INTO courses c USING (SELECT 1 AS x) s ON false WHEN NOT MATCHED THEN DO NOTHING",
    # Not the configured read-only functions: another schema's `now`, a quoted "COUNT".
    "SELECT public.now()",
    "SELECT evil.count(*) FROM users",
    'SELECT "COUNT"(*) FROM users',
]


@pytest.mark.parametrize("sql", READS)
def test_reads_are_read_only(classifier: Classifier, sql: str) -> None:
    assert classifier.analyze(sql).read_only


@pytest.mark.parametrize("sql", WRITES)
def test_writes_are_writes(classifier: Classifier, sql: str) -> None:
    assert not classifier.analyze(sql).read_only


@pytest.mark.parametrize(
    "sql",
    [
        "SET statement_timeout = 0",
        "LISTEN events",
        "PREPARE p AS SELECT 1",
        "CREATE TEMP TABLE scratch (a int)",
        "SELECT pg_advisory_lock(42)",
        "DISCARD ALL",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
        "SELECT set_config('search_path', 'public', false)",
        # Temporary objects made through the pg_temp schema, which is searched first.
        "CREATE TABLE pg_temp.users (user_id uuid)",
        "CREATE VIEW pg_temp.v AS SELECT 1",
        "CREATE SEQUENCE pg_temp.s",
        "SELECT * INTO pg_temp.t FROM users",
        # UPDATE pg_settings is a SET.
        "UPDATE pg_settings SET setting = 'evil' WHERE name = 'search_path'",
        "UPDATE pg_catalog.pg_settings SET setting = '0' WHERE name = 'statement_timeout'",
    ],
)
def test_session_state_changes_are_flagged(classifier: Classifier, sql: str) -> None:
    assert classifier.analyze(sql).changes_session_state


def test_plain_statements_do_not_flag_session_state(classifier: Classifier) -> None:
    assert not classifier.analyze("UPDATE users SET city = $2 WHERE user_id = $1").changes_session_state
    assert not classifier.analyze("SELECT * FROM users WHERE user_id = $1").changes_session_state


def test_a_schema_qualified_read_only_function_is_configured_with_its_schema() -> None:
    c = Classifier(CONFIG.tables, ("reporting.revenue", "lower"), cache_size=8)
    assert c.analyze("SELECT reporting.revenue($1)").read_only
    assert not c.analyze("SELECT revenue($1)").read_only  # another function, maybe
    assert c.analyze("SELECT pg_catalog.lower('A')").read_only
    assert not c.analyze("SELECT reporting.lower('A')").read_only


def test_parse_error_has_message_and_position(classifier: Classifier) -> None:
    with pytest.raises(SqlParseError) as info:
        classifier.analyze("SELECT * FORM users")
    assert "syntax error" in info.value.message
    assert info.value.position == 9  # "FORM" starts at offset 9


@pytest.mark.parametrize("sql", ["BEGIN", "COMMIT", "SELECT 1; SELECT 2"])
def test_unsupported_statements(classifier: Classifier, sql: str) -> None:
    with pytest.raises(UnsupportedStatementError):
        classifier.analyze(sql)


def test_deep_nesting_is_parsed_on_the_parser_thread_not_the_callers_stack(
    classifier: Classifier,
) -> None:
    """30,000 levels of `1+1+...` overflowed the main thread's stack inside pglast and killed
    the process (a segmentation fault, measured): long texts are parsed on a thread with a
    large stack, so this one is classified (PostgreSQL refuses it later, with its own
    error)."""
    sql = "SELECT " + "+".join(["1"] * 30_000)
    assert len(sql) > INLINE_PARSE_MAX
    assert classifier.analyze(sql).read_only
    assert classifier.cached(sql) is not None


async def test_analyze_async_parses_long_texts_off_the_loop(classifier: Classifier) -> None:
    sql = "SELECT * FROM users WHERE user_id = $1 AND city IN (" + ", ".join(
        f"'city {i}'" for i in range(2_000)) + ")"
    assert len(sql) > INLINE_PARSE_MAX
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = classifier._analyzer.analyze

    def spy(text: str) -> Analysis:
        seen.append(threading.get_ident())
        return real(text)

    classifier._analyzer.analyze = spy  # type: ignore[method-assign,assignment]  # a spy
    analysis = await classifier.analyze_async(sql)
    assert [(k.column, k.param) for k in analysis.keys] == [("user_id", 1)]
    assert seen and seen[0] != loop_thread
    assert await classifier.analyze_async(sql) is analysis  # cached now
    assert len(seen) == 1


def test_texts_over_max_sql_bytes_are_refused_unparsed() -> None:
    small = Classifier(CONFIG.tables, (), cache_size=8, max_sql_bytes=1000)
    assert small.analyze("SELECT '" + "x" * 900 + "'").read_only
    for sql in ("SELECT '" + "x" * 1000 + "'", "SELECT '" + "é" * 600 + "'"):  # bytes, not chars
        with pytest.raises(SqlParseError, match="max_sql_bytes") as info:
            small.analyze(sql)
        assert info.value.sqlstate == "54000"
        position = info.value.position  # the first character past the limit (0-based)
        assert position is not None
        assert len(sql[:position].encode()) <= 1000 < len(sql[: position + 1].encode())


def test_parse_cache_hits_and_bounds(classifier: Classifier) -> None:
    classifier.analyze("SELECT 1")
    classifier.analyze("SELECT 1")
    assert (classifier.hits, classifier.misses) == (1, 1)
    for i in range(20):
        classifier.analyze(f"SELECT {i + 2}")
    assert len(classifier._cache) == 8


def test_key_refs_found_in_where_and_insert(classifier: Classifier) -> None:
    a = classifier.analyze("SELECT * FROM users u WHERE u.home_region = 'asia' AND u.city = $1")
    assert [(k.kind, k.column, k.value) for k in a.keys] == [(KeyKind.REGION, "home_region", "asia")]
    a = classifier.analyze("INSERT INTO enrollments (enrollment_id, user_id) VALUES ($2, $1)")
    assert {(k.column, k.param) for k in a.keys} == {("enrollment_id", 2), ("user_id", 1)}


def test_or_does_not_decide_a_shard(classifier: Classifier) -> None:
    a = classifier.analyze("SELECT * FROM users WHERE user_id = $1 OR email = $2")
    assert a.keys == ()


# ---- shard resolution ----------------------------------------------------------------------


def route(classifier: Classifier, sql: str, params: Sequence[object],
          hint: str | None = None) -> OneShard:
    return resolve_shards(classifier.analyze(sql), params, hint, CONFIG)


def test_id_routes_to_its_home_shard(classifier: Classifier) -> None:
    for number, shard in ((NA, "north_america"), (EU, "europe"), (ASIA, "asia")):
        target = route(classifier, "SELECT * FROM users WHERE user_id = $1", [new_id(number)])
        assert target == OneShard(shard, write=False)
        # ids also arrive as text
        target = route(classifier, "SELECT * FROM users WHERE user_id = $1", [str(new_id(number))])
        assert target.shard == shard


def test_region_constant_and_param(classifier: Classifier) -> None:
    assert route(classifier, "SELECT * FROM courses WHERE region = 'europe'", []).shard == "europe"
    assert route(classifier, "SELECT * FROM courses WHERE region = $1", ["asia"]).shard == "asia"


def test_hint_wins(classifier: Classifier) -> None:
    target = route(classifier, "SELECT * FROM users WHERE user_id = $1", [new_id(EU)], hint="asia")
    assert target.shard == "asia"


def test_unknown_hint_and_region(classifier: Classifier) -> None:
    with pytest.raises(UnknownShardError):
        route(classifier, "SELECT 1", [], hint="mars")
    with pytest.raises(UnknownShardError):
        route(classifier, "SELECT * FROM courses WHERE region = $1", ["antarctica"])


def test_missing_shard_key_names_the_keys(classifier: Classifier) -> None:
    with pytest.raises(MissingShardKeyError) as info:
        route(classifier, "UPDATE users SET city = $1 WHERE email = $2", ["x", "y"])
    assert "users.home_region or user_id" in str(info.value)


def test_a_reference_table_write_never_goes_to_one_shard(classifier: Classifier) -> None:
    """The executor sends it to every shard (two-phase commit); a route to one is refused,
    hinted or not."""
    for hint in (None, "asia"):
        with pytest.raises(CrossShardError, match="categories is a reference table"):
            route(classifier, "INSERT INTO categories (name) VALUES ($1)", ["x"], hint)


def test_reference_reads_go_anywhere(classifier: Classifier) -> None:
    assert route(classifier, "SELECT * FROM categories", []).shard in CONFIG.shards


def test_function_arguments_carry_ids(classifier: Classifier) -> None:
    target = route(classifier, "SELECT enroll($1, $2)", [new_id(ASIA), new_id(ASIA)])
    assert target == OneShard("asia", write=True)
    target = route(classifier, "SELECT register_user($1, $2, 'europe')", ["a@b", "A"])
    assert target.shard == "europe"


def test_only_shard_keys_of_configured_tables_route(classifier: Classifier) -> None:
    """A georoute id compared with any other column (an unlisted table's, a text column) names
    no shard: an unlisted table is a reference table, written on every shard or refused, and
    a sharded table needs a key of its [tables] entry or a hint."""
    for sql, params in (
        ("UPDATE scratch SET v = $2 WHERE id = $1", [new_id(EU), 5]),
        ("INSERT INTO scratch (id, v) VALUES ($1, $2)", [new_id(ASIA), 5]),
        ("INSERT INTO scratch (v, note) VALUES ($1, $2)", [5, str(new_id(EU))]),
    ):
        with pytest.raises(CrossShardError, match="scratch is a reference table"):
            route(classifier, sql, params)
    with pytest.raises(MissingShardKeyError, match="audit_log"):
        route(classifier, "SELECT * FROM audit_log WHERE action = $1", [str(new_id(EU))])


def test_conflicting_keys_are_cross_shard(classifier: Classifier) -> None:
    with pytest.raises(CrossShardError):
        route(
            classifier,
            "SELECT * FROM enrollments WHERE user_id = $1 AND enrollment_id = $2",
            [new_id(NA), new_id(EU)],
        )


def test_random_uuid_is_not_an_id(classifier: Classifier) -> None:
    with pytest.raises(MissingShardKeyError):
        route(classifier, "DELETE FROM users WHERE user_id = $1", [uuid.uuid4()])


# ---- ids -----------------------------------------------------------------------------------


def test_id_layout_round_trips() -> None:
    for number in (0, 1, 2, 3, 200, 255):
        assert shard_number_of(new_id(number)) == number
    ident = ids.new_id(7, now_ms=0x0102030405, rand=bytes(range(9)))
    assert ident.version == 8
    assert ident.bytes[:6] == (0x0102030405).to_bytes(6, "big")
    assert ident.bytes[7] == 7
    assert shard_number_of(uuid.uuid4()) is None
    assert shard_number_of("not a uuid") is None
    assert shard_number_of(42) is None


# ---- node health ---------------------------------------------------------------------------


def test_health_state_machine() -> None:
    state = NodeHealth.UP
    state = next_health(state, HealthEvent.PROBE_FAILED)
    assert state is NodeHealth.SUSPECT
    assert next_health(state, HealthEvent.PROBE_OK) is NodeHealth.UP
    state = next_health(state, HealthEvent.PROBE_FAILED)
    assert state is NodeHealth.DOWN
    assert next_health(NodeHealth.UP, HealthEvent.CONNECT_FAILED) is NodeHealth.DOWN
    assert next_health(state, HealthEvent.PROBE_OK) is NodeHealth.UP


def test_a_row_cannot_be_moved_to_another_shard(classifier: Classifier) -> None:
    """Setting a shard key to another shard's value would leave the row where no one looks for
    it (nothing in the schema stops it): refused, whichever way the shard was chosen."""
    move = "UPDATE users SET home_region = $2 WHERE user_id = $1"
    with pytest.raises(CrossShardError, match="move a row of users from shard europe to asia"):
        route(classifier, move, [new_id(EU), "asia"])
    assert route(classifier, move, [new_id(EU), "europe"]).shard == "europe"
    with pytest.raises(CrossShardError, match=r"enrollments\.user_id"):
        route(classifier, "UPDATE enrollments SET user_id = $2 WHERE enrollment_id = $1",
              [new_id(EU), new_id(ASIA)])
    with pytest.raises(CrossShardError, match="asia"):  # a hint does not make it safe
        route(classifier, "UPDATE users SET home_region = 'asia' WHERE email = $1", ["a@b"],
              hint="europe")
    with pytest.raises(CrossShardError, match="to an expression"):
        route(classifier, "UPDATE users SET home_region = lower($2) WHERE user_id = $1",
              [new_id(EU), "EUROPE"])
    with pytest.raises(CrossShardError, match="asia"):
        route(classifier, "INSERT INTO users (user_id, home_region) VALUES ($1, 'europe') "
              "ON CONFLICT (user_id) DO UPDATE SET home_region = 'asia'", [new_id(EU)])
    # The upsert's own inserted value, and a column set to itself, stay where they are.
    upsert = ("INSERT INTO users (user_id, home_region) VALUES ($1, $2) ON CONFLICT (user_id) "
              "DO UPDATE SET home_region = EXCLUDED.home_region")
    assert route(classifier, upsert, [new_id(EU), "europe"]).shard == "europe"
    same = "UPDATE users SET home_region = home_region, city = $2 WHERE user_id = $1"
    assert route(classifier, same, [new_id(EU), "Lyon"]).shard == "europe"


@pytest.mark.parametrize("sql", [
    # A key of another table says nothing of which payments the CTE deletes.
    "WITH x AS (DELETE FROM payments RETURNING *) SELECT * FROM users WHERE user_id = $1",
    "WITH x AS (UPDATE payments SET status = 'x' RETURNING *) SELECT * FROM users WHERE user_id = $1",
])
def test_a_write_in_a_cte_must_key_the_table_it_writes(classifier: Classifier, sql: str) -> None:
    with pytest.raises(MissingShardKeyError, match=r"payments\.payment_id"):
        route(classifier, sql, [new_id(EU)])
    assert route(classifier, sql, [new_id(EU)], hint="europe").shard == "europe"  # explicit


def test_writes_keyed_on_their_own_table_or_through_a_join_route(classifier: Classifier) -> None:
    for sql in ("UPDATE enrollments SET status = 'x' WHERE enrollment_id = $1",
                "DELETE FROM enrollments WHERE user_id = $1",
                "WITH d AS (DELETE FROM reviews WHERE review_id = $1 RETURNING *) SELECT * FROM d",
                "UPDATE coupons k SET code = 'x' FROM courses c "
                "WHERE k.course_id = c.course_id AND c.course_id = $1",
                "DELETE FROM lesson_progress lp USING enrollments en "
                "WHERE lp.enrollment_id = en.enrollment_id AND en.user_id = $1",
                "INSERT INTO certificates (certificate_id, enrollment_id) "
                "SELECT georoute_id(), enrollment_id FROM enrollments WHERE enrollment_id = $1",
                "WITH n AS (INSERT INTO reviews (review_id, rating) VALUES (georoute_id(), 5) "
                "RETURNING *) SELECT * FROM users WHERE user_id = $1"):
        assert route(classifier, sql, [new_id(EU)]).shard == "europe"


def test_shard_keys_may_be_set_to_null_default_themselves_or_plain_values(
    classifier: Classifier,
) -> None:
    eu = new_id(EU)
    for sql, params in (
        ("UPDATE remote_enrollments SET coupon_id = NULL WHERE course_id = $1", [eu]),
        ("UPDATE remote_enrollments SET coupon_id = NULL::uuid WHERE course_id = $1", [eu]),
        ("UPDATE remote_enrollments SET coupon_id = DEFAULT WHERE course_id = $1", [eu]),
        ("UPDATE remote_enrollments SET coupon_id = $2 WHERE course_id = $1",
         [eu, uuid.uuid4()]),
        ("UPDATE users SET (home_region, city) = ($2, $3) WHERE user_id = $1",
         [eu, "europe", "Lyon"]),
        ("INSERT INTO users AS u (user_id, home_region) VALUES ($1, 'europe') "
         "ON CONFLICT (user_id) DO UPDATE SET home_region = u.home_region", [eu]),
    ):
        assert route(classifier, sql, params).shard == "europe", sql
    with pytest.raises(CrossShardError, match="to asia"):
        route(classifier, "UPDATE users SET (home_region, city) = ($2, $3) WHERE user_id = $1",
              [eu, "asia", "Osaka"])
    with pytest.raises(CrossShardError, match="to an expression"):
        route(classifier, "UPDATE users SET (home_region, city) = (SELECT 'asia', 'x') "
              "WHERE user_id = $1", [eu])


@pytest.mark.parametrize("sql", [
    "SET LOCAL statement_timeout = 0",
    "DECLARE c CURSOR FOR SELECT * FROM users",
    "SELECT set_config('search_path', 'public', true)",
])
def test_transaction_scoped_changes_leave_the_session_alone(
    classifier: Classifier, sql: str
) -> None:
    assert not classifier.analyze(sql).changes_session_state
