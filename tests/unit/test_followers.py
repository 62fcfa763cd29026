"""After a managed promotion, the shard's other standbys are re-pointed at the new primary:
their primary_conninfo rewritten by libpq's rules (router/core/conninfo.py), and which of them
can follow (router/core/failover.py's plan_followers). Those it could not re-point are found
later by reconciliation: tests/unit/test_reconcile.py."""

from __future__ import annotations

import random

import pytest

from router.core.conninfo import (
    format_conninfo,
    parse_conninfo,
    quote_conninfo_value,
    repoint_conninfo,
    sql_literal,
)
from router.core.errors import ConninfoError
from router.core.failover import FollowAction, ShardNodeState, plan_followers

# What pg_basebackup -R writes (PostgreSQL 18), with a passfile path that needs quotes.
BASEBACKUP = (
    "user=postgres passfile='/home/pg user/.pgpass' channel_binding=prefer host=127.0.0.1 "
    "port=16502 sslmode=prefer sslnegotiation=postgres sslcompression=0 sslcertmode=allow "
    "sslsni=1 ssl_min_protocol_version=TLSv1.2 gssencmode=prefer krbsrvname=postgres "
    "gssdelegation=0 target_session_attrs=any load_balance_hosts=disable"
)


def test_a_basebackup_conninfo_keeps_every_setting_and_changes_only_host_and_port() -> None:
    before = parse_conninfo(BASEBACKUP)
    after = parse_conninfo(repoint_conninfo(BASEBACKUP, "10.0.0.7", 16503))
    assert [k for k, _ in after] == [k for k, _ in before]  # same keys, same order
    changed = {k: (dict(before)[k], v) for k, v in after if dict(before)[k] != v}
    assert changed == {"host": ("127.0.0.1", "10.0.0.7"), "port": ("16502", "16503")}
    assert dict(after)["passfile"] == "/home/pg user/.pgpass"


def test_quoted_values_and_backslash_escapes_are_read_as_libpq_reads_them() -> None:
    text = r"password='it''s' user = 'a b\'c\\d'   application_name=x\ y dbname=''"
    # libpq has no doubled-quote escape: 'it' ends the value, and "'s'" starts the next
    # keyword, which has no "=": an error, as libpq says.
    with pytest.raises(ConninfoError, match='missing "=" after'):
        parse_conninfo(text)
    text = r"password='p a\'ss\\w=rd' user = 'a b' application_name=x\ y dbname='' sslmode= "
    assert parse_conninfo(text) == [("password", "p a'ss\\w=rd"), ("user", "a b"),
                                    ("application_name", "x y"), ("dbname", ""),
                                    ("sslmode", "")]


def test_rewriting_quotes_what_needs_it_and_reads_back_the_same() -> None:
    text = r"user='r\'o b' password='s3 cr\\et' host=old port=1 application_name=walrcv.2"
    out = repoint_conninfo(text, "new-host", 5433)
    assert out == (r"user='r\'o b' password='s3 cr\\et' host='new-host' port=5433 "
                   "application_name=walrcv.2")
    assert dict(parse_conninfo(out)) == {"user": "r'o b", "password": "s3 cr\\et",
                                         "host": "new-host", "port": "5433",
                                         "application_name": "walrcv.2"}


def test_hostaddr_and_several_hosts_are_replaced_by_the_one_new_address() -> None:
    text = "hostaddr=10.1.1.1 user=u host=a,b port=5432,5433 sslmode=require"
    assert repoint_conninfo(text, "10.2.2.2", 6000) == (
        "host=10.2.2.2 port=6000 user=u sslmode=require")


def test_a_conninfo_without_host_or_port_gets_them_and_a_repeated_key_keeps_its_last() -> None:
    assert repoint_conninfo("user=a user=b", "h", 1) == "user=b host=h port=1"
    assert repoint_conninfo("", "h", 1) == "host=h port=1"


def test_repointing_twice_changes_nothing_the_second_time() -> None:
    once = repoint_conninfo(BASEBACKUP, "127.0.0.1", 16503)
    assert repoint_conninfo(once, "127.0.0.1", 16503) == once


@pytest.mark.parametrize(("text", "message"), [
    ("host", 'missing "=" after "host"'),
    ("host=a port", 'missing "=" after "port"'),
    ("password='abc", "unterminated quoted string"),
    ("=x", "invalid connection option ''"),
    ("Host=a", "invalid connection option 'Host'"),
    ("postgresql://u@h?port", 'missing "=" in the URI query parameter'),
])
def test_what_libpq_refuses_is_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConninfoError, match=message):
        repoint_conninfo(text, "h", 1)


def test_any_value_survives_a_round_trip() -> None:
    rng = random.Random(20261204)
    alphabet = "ab Z9_.-='\\\t\n/é,"
    for _ in range(500):
        pairs = [(rng.choice(["user", "password", "application_name", "passfile"]),
                  "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))))
                 for _ in range(rng.randrange(1, 5))]
        assert parse_conninfo(format_conninfo(pairs)) == pairs


def test_values_are_quoted_only_when_needed() -> None:
    assert quote_conninfo_value("127.0.0.1") == "127.0.0.1"
    assert quote_conninfo_value("") == "''"
    assert quote_conninfo_value("a-b") == "'a-b'"
    assert quote_conninfo_value("it's\\") == r"'it\'s\\'"


def test_sql_literal_reads_back_whatever_standard_conforming_strings_says() -> None:
    assert sql_literal("host=a port=1") == "'host=a port=1'"
    assert sql_literal("user='x'") == "'user=''x'''"
    assert sql_literal(r"password='a\'b'") == r"E'password=''a\\''b'''"
    with pytest.raises(ConninfoError):
        sql_literal("a\x00b")


# ---- which standbys follow the new primary ------------------------------------------------------


def standby(name: str, received: int | None, replayed: int | None = None) -> ShardNodeState:
    return ShardNodeState(name, True, received, replayed if replayed is not None else received,
                          None)


def test_every_other_standby_at_or_behind_the_promotion_point_is_repointed() -> None:
    nodes = [ShardNodeState("europe-1", None, None, None, None),  # the dead old primary
             standby("europe-2", 1000), standby("europe-4", 1000), standby("europe-3", 900)]
    plans = plan_followers("europe-1", "europe-2", 1000, nodes)
    assert [(p.replica, p.action) for p in plans] == [
        ("europe-3", FollowAction.REPOINT), ("europe-4", FollowAction.REPOINT)]
    assert "it follows europe-2" in plans[0].reason


def test_standbys_that_cannot_follow_are_named_with_the_reason() -> None:
    nodes = [ShardNodeState("europe-1", None, None, None, None), standby("europe-2", 1000),
             standby("europe-3", 1200, 800),  # received past the fork (replayed or not)
             ShardNodeState("europe-4", None, None, None, None),
             ShardNodeState("europe-5", False, None, 5000, 1)]
    plans = {p.replica: p for p in plan_followers("europe-1", "europe-2", 1000, nodes)}
    assert {n: p.action for n, p in plans.items()} == {
        "europe-3": FollowAction.CANNOT_FOLLOW, "europe-4": FollowAction.UNREACHABLE,
        "europe-5": FollowAction.NOT_A_STANDBY}
    assert "past europe-2's promotion at 1000" in plans["europe-3"].reason
    assert "georoute cluster rejoin europe-3" in plans["europe-3"].reason
    assert "did not answer" in plans["europe-4"].reason


def test_an_adopted_promotion_repoints_every_standby_its_point_unknown() -> None:
    nodes = [standby("asia-2", 5000), ShardNodeState("asia-3", False, None, 10, 2),
             ShardNodeState("asia-1", None, None, None, None)]
    plans = plan_followers("asia-1", "asia-3", None, nodes)
    assert [(p.replica, p.action) for p in plans] == [("asia-2", FollowAction.REPOINT)]


def test_a_shard_of_one_replica_has_no_followers() -> None:
    nodes = [ShardNodeState("asia-1", None, None, None, None), standby("asia-2", 10)]
    assert plan_followers("asia-1", "asia-2", 10, nodes) == ()
