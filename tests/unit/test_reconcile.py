"""Reconciliation of a shard's standbys after a promotion (router/core/reconcile.py): which router
node acts, which standbys it looks at and when, and which of them it re-points, each a pure
function of one snapshot, so a router that never saw the promotion decides as the promoting
one would have."""

from __future__ import annotations

import pytest

from protocol.heartbeat import ReportedHealth
from router.core.conninfo import DEFAULT_PORT, conninfo_targets
from router.core.errors import ConninfoError
from router.core.membership import MemberView
from router.core.reconcile import (
    FOLLOW_RETRY_FIRST_SECONDS,
    FOLLOW_RETRY_MAX_SECONDS,
    RECHECK_SECONDS,
    CheckWait,
    NodeSeen,
    Upstream,
    due_standbys,
    judge_upstream,
    reconciler_for,
    wait_after,
)

UP, SUSPECT, DOWN = ReportedHealth.UP, ReportedHealth.SUSPECT, ReportedHealth.DOWN
ADDRESSES = {"europe-1": ("127.0.0.1", 7401), "europe-2": ("127.0.0.1", 7402),
             "europe-3": ("127.0.0.1", 7403)}


def sees(health: ReportedHealth, primary: str = "europe-2") -> MemberView:
    return MemberView({primary: health}, {"europe": primary})


# ---- which router node acts ----------------------------------------------------------------


def test_the_lowest_named_of_a_majority_that_agrees_on_the_primary_acts() -> None:
    members = {"r2": sees(UP), "r3": sees(UP)}  # r1 is not alive here
    turn = reconciler_for("r3", 3, members, "europe", "europe-2")
    assert turn.actor == "r2" and "r2, r3 see europe-2 up" in turn.reason
    # Every node with the same snapshot names the same one, whatever its own name.
    members = {name: sees(UP) for name in ("r1", "r2", "r3", "r4", "r5")}
    assert {reconciler_for(n, 5, members, "europe", "europe-2").actor
            for n in members} == {"r1"}


def test_a_cut_off_node_never_acts() -> None:
    assert reconciler_for("r1", 3, {"r1": sees(UP)}, "europe", "europe-2").actor is None
    members = {"r1": sees(UP), "r2": sees(UP)}
    turn = reconciler_for("r1", 5, members, "europe", "europe-2")
    assert turn.actor is None and "2 of 5 router nodes alive here, 3 needed" in turn.reason


def test_nobody_acts_unless_a_majority_names_the_primary_and_sees_it_up() -> None:
    # r1 sees the primary down (a failover may be coming): it is not counted, and the other
    # two are not enough of five.
    members = {"r1": sees(DOWN), "r2": sees(UP), "r3": sees(UP)}
    assert reconciler_for("r2", 5, members, "europe", "europe-2").actor is None
    # Of three, they are: r2 acts, not r1 (lower-named but not agreeing).
    assert reconciler_for("r1", 3, members, "europe", "europe-2").actor == "r2"
    # A peer that names another primary (it has not followed the promotion yet) or sees the
    # primary only SUSPECT does not agree either.
    members = {"r1": sees(UP, "europe-1"), "r2": sees(SUSPECT), "r3": sees(UP)}
    turn = reconciler_for("r3", 3, members, "europe", "europe-2")
    assert turn.actor is None and "1 of 3 router nodes see europe-2 up" in turn.reason


# ---- which standbys are looked at, and when ------------------------------------------------


def nodes(*standbys: NodeSeen, primary: NodeSeen | None = None) -> list[NodeSeen]:
    return [primary or NodeSeen("europe-2", True, False), *standbys]


def test_a_router_that_has_looked_at_nothing_looks_at_every_standby_up_and_in_recovery() -> None:
    seen = nodes(NodeSeen("europe-3", True, True), NodeSeen("europe-1", True, True),
                 NodeSeen("europe-4", False, True),  # down
                 NodeSeen("europe-5", True, False),  # writable: fenced, a person's to rejoin
                 NodeSeen("europe-6", True, None))  # did not answer the last probe
    check = due_standbys("europe-2", seen, {}, now=100.0)
    assert check.due == ("europe-1", "europe-3")
    assert check.waits == {}


@pytest.mark.parametrize("head", [
    NodeSeen("europe-2", False, False),  # the primary is not up
    NodeSeen("europe-2", True, True),  # still in recovery (the promotion not finished)
    NodeSeen("europe-2", True, None),
    NodeSeen("europe-2", True, False, fenced=True),
])
def test_nothing_is_looked_at_while_the_primary_is_not_agreed_and_writable(
    head: NodeSeen,
) -> None:
    check = due_standbys("europe-2", nodes(NodeSeen("europe-3", True, True), primary=head), {},
                         now=0.0)
    assert check.due == () and "not an agreed, writable primary" in check.reason
    assert due_standbys("europe-9", nodes(NodeSeen("europe-3", True, True)), {},
                        now=0.0).due == ()  # a primary this router does not know


def test_a_standby_is_looked_at_again_after_its_wait() -> None:
    seen = nodes(NodeSeen("europe-3", True, True))
    waits = {"europe-3": wait_after(None, "europe-2", failed=False, now=100.0)}
    assert due_standbys("europe-2", seen, waits, now=100.0 + RECHECK_SECONDS - 0.1).due == ()
    check = due_standbys("europe-2", seen, waits, now=100.0 + RECHECK_SECONDS)
    assert check.due == ("europe-3",) and check.waits == waits


def test_a_standby_back_after_being_down_is_looked_at_at_once_its_failures_kept() -> None:
    waits = {"europe-3": CheckWait("europe-2", 3, 500.0)}
    down = due_standbys("europe-2", nodes(NodeSeen("europe-3", False, None)), waits, now=100.0)
    assert down.due == () and down.waits == {"europe-3": CheckWait("europe-2", 3, 0.0)}
    back = due_standbys("europe-2", nodes(NodeSeen("europe-3", True, True)), down.waits,
                        now=100.5)
    assert back.due == ("europe-3",)
    # Failing again waits longer than a first failure would.
    assert wait_after(back.waits["europe-3"], "europe-2", True, 100.5).not_before == 108.5


def test_a_wait_for_an_earlier_primary_counts_for_nothing() -> None:
    waits = {"europe-3": CheckWait("europe-1", 5, 1000.0)}
    check = due_standbys("europe-2", nodes(NodeSeen("europe-3", True, True)), waits, now=1.0)
    assert check.due == ("europe-3",) and check.waits == {}
    assert wait_after(waits["europe-3"], "europe-2", True, 1.0) == CheckWait(
        "europe-2", 1, 1.0 + FOLLOW_RETRY_FIRST_SECONDS)


def test_each_failed_look_waits_twice_as_long_up_to_a_cap_and_a_good_one_resets_it() -> None:
    wait: CheckWait | None = None
    now, delays = 0.0, []
    for _ in range(10):
        wait = wait_after(wait, "europe-2", failed=True, now=now)
        delays.append(wait.not_before - now)
        now = wait.not_before
    assert delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert delays[-1] == max(delays) == FOLLOW_RETRY_MAX_SECONDS
    assert wait is not None and wait.failures == 10
    assert wait_after(wait, "europe-2", failed=False, now=now) == CheckWait(
        "europe-2", 0, now + RECHECK_SECONDS)


# ---- where a standby streams from ----------------------------------------------------------


BASEBACKUP = ("user=postgres passfile='/home/pg user/.pgpass' channel_binding=prefer "
              "host=127.0.0.1 port={port} sslmode=prefer application_name=europe-3")


def test_a_standby_naming_a_former_primary_is_repointed_and_one_naming_the_primary_is_not(
) -> None:
    stale = judge_upstream("europe-3", BASEBACKUP.format(port=7401), ADDRESSES, "europe-2")
    assert stale.upstream is Upstream.FORMER_PRIMARY and stale.repoint
    assert stale.names == ("europe-1",)
    assert "still streams from europe-1, not the primary europe-2" in stale.detail
    good = judge_upstream("europe-3", BASEBACKUP.format(port=7402), ADDRESSES, "europe-2")
    assert good.upstream is Upstream.PRIMARY and not good.repoint


def test_a_standby_naming_somewhere_not_configured_is_left_alone() -> None:
    for conninfo in (BASEBACKUP.format(port=7499),  # a cascade from another server
                     "host=10.1.2.3 port=7401 user=postgres",  # another host, same port
                     "host=localhost port=7401",  # router.toml says 127.0.0.1: not matched
                     "user=postgres"):  # the default Unix socket
        judged = judge_upstream("europe-3", conninfo, ADDRESSES, "europe-2")
        assert judged.upstream is Upstream.NOT_CONFIGURED and not judged.repoint, conninfo
        assert "not a node of its shard in router.toml: left as it is" in judged.detail


def test_several_hosts_repoint_only_when_all_are_former_primaries() -> None:
    both = "host=127.0.0.1,127.0.0.1 port=7401,7403"
    assert judge_upstream("europe-4", both, ADDRESSES, "europe-2").upstream is (
        Upstream.FORMER_PRIMARY)
    assert judge_upstream("europe-4", "host=127.0.0.1,127.0.0.1 port=7401,7402", ADDRESSES,
                          "europe-2").upstream is Upstream.PRIMARY
    assert judge_upstream("europe-4", "host=127.0.0.1,10.9.9.9 port=7401", ADDRESSES,
                          "europe-2").upstream is Upstream.NOT_CONFIGURED


def test_no_conninfo_or_one_that_cannot_be_rewritten_is_left_alone() -> None:
    assert judge_upstream("europe-3", "  ", ADDRESSES, "europe-2").upstream is Upstream.NONE
    for text in ("postgresql://postgres@127.0.0.1:x/postgres", "host=127.0.0.1 port=x",
                 "host='unterminated", "postgresql://h?application_name"):
        judged = judge_upstream("europe-3", text, ADDRESSES, "europe-2")
        assert judged.upstream is Upstream.UNREADABLE and not judged.repoint, text


def test_a_uri_conninfo_is_judged_as_libpq_reads_it() -> None:
    stale = judge_upstream("europe-3", "postgresql://postgres@127.0.0.1:7401/postgres",
                           ADDRESSES, "europe-2")
    assert stale.upstream is Upstream.FORMER_PRIMARY and stale.repoint
    good = judge_upstream("europe-3", "postgres://127.0.0.1:7402?application_name=e3",
                          ADDRESSES, "europe-2")
    assert good.upstream is Upstream.PRIMARY


def test_where_a_conninfo_connects_follows_libpqs_rules() -> None:
    assert conninfo_targets("host=a port=1") == (("a", 1),)
    assert conninfo_targets("user=x") == (("", DEFAULT_PORT),)
    assert conninfo_targets("host=a,b port=5") == (("a", 5), ("b", 5))
    assert conninfo_targets("host=a,b port=5,") == (("a", 5), ("b", DEFAULT_PORT))
    # hostaddr is where libpq connects; host then only names it (TLS, passwords).
    assert conninfo_targets("host=db.example hostaddr=10.0.0.1 port=6") == (("10.0.0.1", 6),)
    assert conninfo_targets("hostaddr=10.0.0.1,10.0.0.2") == (
        ("10.0.0.1", DEFAULT_PORT), ("10.0.0.2", DEFAULT_PORT))
    assert conninfo_targets("port=1 port=2 host=a") == (("a", 2),)  # the last one counts
    for text, message in (("host=a,b port=1,2,3", "3 port numbers to 2 hosts"),
                          ("host=a,b hostaddr=1.1.1.1", "2 host names to 1 hostaddr"),
                          ("host=a port=\uff15", "invalid port number")):
        with pytest.raises(ConninfoError, match=message):
            conninfo_targets(text)


def test_a_router_that_never_saw_the_promotion_repoints_the_standby_left_behind() -> None:
    """The whole decision on the snapshot after a promotion that missed europe-3 (it was down):
    europe-2 is the primary, europe-3 is back and names europe-1. A router with no memory of
    any of it (no waits, first round) acts, looks at europe-3 and re-points it."""
    members = {"r1": sees(UP), "r2": sees(UP), "r3": sees(UP)}
    assert reconciler_for("r1", 3, members, "europe", "europe-2").actor == "r1"
    seen = [NodeSeen("europe-1", False, None), NodeSeen("europe-2", True, False),
            NodeSeen("europe-3", True, True)]
    check = due_standbys("europe-2", seen, {}, now=0.0)
    assert check.due == ("europe-3",)
    judged = judge_upstream("europe-3", BASEBACKUP.format(port=7401), ADDRESSES, "europe-2")
    assert judged.repoint
