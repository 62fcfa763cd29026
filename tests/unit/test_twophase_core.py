"""router/core/twophase.py and core/reference.py: prepared-transaction names, the coordinator's
state table, the recovery decision, which decision rows may be forgotten, and which tables
are reference tables. Pure: no database."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import TableConfig
from router.core.classify import Analyzer
from router.core.reference import is_reference_table
from router.core.twophase import (
    GID_PREFIX,
    Gid,
    IllegalTransition,
    Recorded,
    RecoveryAction,
    TxEvent,
    TxState,
    advance,
    forgettable,
    format_gid,
    parse_gid,
    recovery_action,
)

GTID = "0123456789abcdef0123456789abcdef"
SHARDS = ("north_america", "europe", "asia")


# ---- names -------------------------------------------------------------------------------------


def test_a_gid_names_its_transaction_its_decision_and_its_shard() -> None:
    gid = format_gid(GTID, "europe", "asia")
    assert gid == f"georoute:{GTID}:europe:asia"
    assert parse_gid(gid) == Gid(GTID, "europe", "asia")
    assert str(Gid(GTID, "europe", "asia")) == gid


@given(gtid=st.text("0123456789abcdef", min_size=32, max_size=32),
       coordinator=st.sampled_from(SHARDS), participant=st.sampled_from(SHARDS))
def test_every_gid_reads_back(gtid: str, coordinator: str, participant: str) -> None:
    assert parse_gid(format_gid(gtid, coordinator, participant)) == Gid(gtid, coordinator,
                                                                        participant)


@pytest.mark.parametrize("gid", [
    "other:0123456789abcdef0123456789abcdef:europe:asia",  # another program's
    f"{GID_PREFIX}:{GTID}:europe",  # too few parts
    f"{GID_PREFIX}:{GTID}:europe:asia:more",
    f"{GID_PREFIX}:NOTHEX:europe:asia",
    f"{GID_PREFIX}:{GTID.upper()}:europe:asia",
    f"{GID_PREFIX}:{GTID}::asia",
    "",
])
def test_names_that_are_not_ours_are_left_alone(gid: str) -> None:
    assert parse_gid(gid) is None


@pytest.mark.parametrize(("gtid", "shard"), [
    ("short", "europe"), (GTID, "eu'rope"), (GTID, "a:b"), (GTID, ""), (GTID, "x" * 200),
])
def test_a_name_that_would_not_read_back_or_would_break_its_sql_literal_is_refused(
    gtid: str, shard: str
) -> None:
    with pytest.raises(ValueError):
        format_gid(gtid, shard or "europe", shard)


# ---- the coordinator's states --------------------------------------------------------------


def _walk(*events: TxEvent) -> TxState:
    state = TxState.OPEN
    for event in events:
        state = advance(state, event)
    return state


def test_the_paths_a_commit_can_take() -> None:
    committed = _walk(TxEvent.COMMIT_REQUESTED, TxEvent.ALL_PREPARED,
                      TxEvent.DECISION_COMMITTED, TxEvent.PHASE_TWO_DONE)
    assert committed is TxState.COMMITTED
    refused_prepare = _walk(TxEvent.COMMIT_REQUESTED, TxEvent.PREPARE_FAILED,
                            TxEvent.ROLLED_BACK)
    assert refused_prepare is TxState.ABORTED
    refused_decision = _walk(TxEvent.COMMIT_REQUESTED, TxEvent.ALL_PREPARED,
                             TxEvent.DECISION_REFUSED, TxEvent.ROLLED_BACK)
    assert refused_decision is TxState.ABORTED
    lost = _walk(TxEvent.COMMIT_REQUESTED, TxEvent.ALL_PREPARED, TxEvent.DECISION_UNREADABLE)
    assert lost is TxState.IN_DOUBT
    assert _walk(TxEvent.ROLLBACK_REQUESTED, TxEvent.ROLLED_BACK) is TxState.ABORTED


def test_nothing_is_rolled_back_once_the_decision_is_commit() -> None:
    decided = _walk(TxEvent.COMMIT_REQUESTED, TxEvent.ALL_PREPARED, TxEvent.DECISION_COMMITTED)
    for event in (TxEvent.PREPARE_FAILED, TxEvent.DECISION_REFUSED, TxEvent.ROLLBACK_REQUESTED,
                  TxEvent.ROLLED_BACK):
        with pytest.raises(IllegalTransition):
            advance(decided, event)


def test_no_decision_without_every_participant_prepared() -> None:
    preparing = _walk(TxEvent.COMMIT_REQUESTED)
    with pytest.raises(IllegalTransition):
        advance(preparing, TxEvent.DECISION_COMMITTED)


def test_the_final_states_take_no_event() -> None:
    for state, event in itertools.product(
        (TxState.COMMITTED, TxState.ABORTED, TxState.IN_DOUBT), TxEvent
    ):
        with pytest.raises(IllegalTransition):
            advance(state, event)


# ---- recovery --------------------------------------------------------------------------------


@pytest.mark.parametrize(("recorded", "age", "action"), [
    (Recorded.COMMIT, 0.0, RecoveryAction.COMMIT_PREPARED),  # obeyed at once, at any age
    (Recorded.COMMIT, 1e6, RecoveryAction.COMMIT_PREPARED),
    (Recorded.ABORT, 0.0, RecoveryAction.ROLLBACK_PREPARED),
    (Recorded.NOTHING, 9.99, RecoveryAction.WAIT),  # its coordinator may still decide
    (Recorded.NOTHING, 10.0, RecoveryAction.RECORD_ABORT),  # presumed abort, recorded first
    (Recorded.UNREADABLE, 1e6, RecoveryAction.WAIT),  # never guessed
])
def test_recovery_obeys_a_decision_and_presumes_abort_only_after_the_grace_period(
    recorded: Recorded, age: float, action: RecoveryAction
) -> None:
    assert recovery_action(recorded, age, grace_seconds=10.0) is action


@given(recorded=st.sampled_from(Recorded), age=st.floats(0, 1e7), grace=st.floats(0.1, 1e4))
def test_recovery_never_commits_what_was_not_decided_commit(
    recorded: Recorded, age: float, grace: float
) -> None:
    action = recovery_action(recorded, age, grace)
    assert (action is RecoveryAction.COMMIT_PREPARED) == (recorded is Recorded.COMMIT)


def test_decision_rows_are_forgotten_only_when_no_branch_is_left_and_every_shard_answered(
) -> None:
    decided = {"a" * 32: ["asia"], "b" * 32: ["europe", "asia"]}
    assert forgettable(decided, {"b" * 32}, SHARDS, SHARDS) == {"a" * 32}
    # A shard that did not answer may hold a branch of any of them.
    assert forgettable(decided, set(), ["europe", "asia"], SHARDS) == set()
    assert forgettable({}, set(), SHARDS, SHARDS) == set()


def test_a_decision_naming_a_shard_this_router_does_not_know_is_kept() -> None:
    """A router whose router.toml lacks a region (added since, before its reload) did not
    list that region's prepared branches: the commit row that still decides one there is
    kept, or the next sweep to see the branch would presume an abort and roll it back."""
    known = ["north_america", "europe", "asia"]
    decided = {"a" * 32: ["oceania"], "b" * 32: ["europe", "oceania"], "c" * 32: ["asia"]}
    assert forgettable(decided, set(), known, known) == {"c" * 32}
    assert forgettable(decided, set(), [*known, "oceania"], [*known, "oceania"]) == set(decided)


# ---- reference tables -----------------------------------------------------------------------

SHARDED = {"users": TableConfig("users", "home_region", ("user_id",))}


@pytest.mark.parametrize(("name", "schema", "reference"), [
    ("categories", None, True),
    ("categories", "public", True),
    ("users", None, False),  # sharded
    ("georoute_idempotency", None, False),  # georoute's own, one per shard
    ("georoute_tx_decisions", None, False),
    ("schema_migrations", None, False),
    ("t", "pg_temp", False),
    ("t", "pg_temp_3", False),
    ("pg_settings", "pg_catalog", False),
])
def test_which_tables_are_reference_tables(name: str, schema: str | None,
                                           reference: bool) -> None:
    assert is_reference_table(name, schema, SHARDED) is reference


@pytest.mark.parametrize(("sql", "written"), [
    ("INSERT INTO categories (slug, name) VALUES ($1, $2)", ("categories",)),
    ("UPDATE categories SET name = $2 WHERE category_id = $1", ("categories",)),
    ("DELETE FROM public.categories", ("categories",)),
    ("TRUNCATE categories", ("categories",)),
    ("WITH d AS (DELETE FROM categories RETURNING 1) SELECT count(*) FROM d", ("categories",)),
    ("MERGE INTO categories c USING (VALUES (1)) v(x) ON false "
     "WHEN NOT MATCHED THEN INSERT (slug, name) VALUES ('s', 'n')", ("categories",)),
    ("SELECT * FROM categories", ()),  # a read
    ("UPDATE users SET city = 'x' WHERE user_id = $1", ()),  # sharded
    ("INSERT INTO users (home_region) SELECT 'europe' FROM categories", ()),  # only read
    ("INSERT INTO pg_temp.scratch VALUES (1)", ()),
    ("DELETE FROM georoute_idempotency WHERE idem_key = $1", ()),
])
def test_the_analysis_names_the_reference_tables_a_statement_writes(
    sql: str, written: tuple[str, ...]
) -> None:
    assert Analyzer(SHARDED, ()).analyze(sql).reference_writes == written
