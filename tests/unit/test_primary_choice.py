"""Managed failover's pure halves: which node is a shard's agreed primary and which are fenced
(router/core/primary.py), and the promoter's last check under its locks
(router/core/failover.py decide_promotion)."""

from __future__ import annotations

import pytest

from router.core.failover import (
    Adopt,
    GiveUp,
    PromoteNow,
    ShardNodeState,
    decide_promotion,
)
from router.core.primary import ChoiceReason, NodeSays, choose_primary


def says(name: str, in_recovery: bool | None, timeline: int | None = None) -> NodeSays:
    return NodeSays(name, in_recovery, timeline)


def test_the_writable_node_on_the_newest_timeline_is_the_primary() -> None:
    choice = choose_primary("eu-1", [says("eu-1", None), says("eu-2", False, 2)])
    assert (choice.primary, choice.reason, choice.fenced) == (
        "eu-2", ChoiceReason.CURRENT_NOT_WRITABLE, frozenset())


def test_an_old_primary_back_on_an_older_timeline_is_fenced_not_followed() -> None:
    # The router restarted and router.toml names eu-1 first; eu-1 came back writable on
    # timeline 1, eu-2 was promoted to 2: eu-2 is the primary, eu-1 fenced.
    choice = choose_primary("eu-1", [says("eu-1", False, 1), says("eu-2", False, 2)])
    assert (choice.primary, choice.reason) == ("eu-2", ChoiceReason.NEWER_TIMELINE)
    assert choice.fenced == {"eu-1"}
    again = choose_primary("eu-2", [says("eu-1", False, 1), says("eu-2", False, 2)],
                           choice.fenced)
    assert (again.primary, again.reason, again.fenced) == ("eu-2", ChoiceReason.KEEP, {"eu-1"})


def test_fenced_stays_fenced_while_unreachable_and_ends_when_a_standby() -> None:
    gone = choose_primary("eu-2", [says("eu-1", None), says("eu-2", False, 2)], {"eu-1"})
    assert gone.fenced == {"eu-1"}
    rejoined = choose_primary("eu-2", [says("eu-1", True), says("eu-2", False, 2)], {"eu-1"})
    assert rejoined.fenced == frozenset()


def test_no_writable_node_keeps_the_current_primary() -> None:
    choice = choose_primary("eu-1", [says("eu-1", None), says("eu-2", True)])
    assert (choice.primary, choice.reason, choice.fenced) == (
        "eu-1", ChoiceReason.NO_WRITABLE, frozenset())


def test_two_writable_on_one_timeline_keep_the_current_and_fence_the_other() -> None:
    choice = choose_primary("eu-2", [says("eu-1", False, 2), says("eu-2", False, 2)])
    assert (choice.primary, choice.reason, choice.fenced) == (
        "eu-2", ChoiceReason.SPLIT_BRAIN, {"eu-1"})
    # neither is the current one: the lowest name, deterministically on every router
    other = choose_primary("eu-3", [says("eu-1", False, 2), says("eu-2", False, 2),
                                    says("eu-3", None)])
    assert (other.primary, other.fenced) == ("eu-1", {"eu-2"})


def test_the_primary_is_never_fenced_even_if_it_was() -> None:
    """eu-2 was fenced (writable on an old timeline), then rejoined and promoted: writable on
    a timeline newer than any this router saw writable, it is followed and unfenced."""
    choice = choose_primary("eu-1", [says("eu-1", None), says("eu-2", False, 3)], {"eu-2"},
                            timeline_floor=2)
    assert choice.primary == "eu-2" and choice.fenced == frozenset()


@pytest.mark.parametrize("floor", [0, 2])
def test_a_fenced_old_primary_is_not_chosen_when_the_new_primary_is_silent(floor: int) -> None:
    """europe-2 is the primary on timeline 2; the old primary europe-1 came back writable on
    timeline 1 and is fenced. One probe of europe-2 fails (frozen, busy, its link down):
    europe-1, the only writable node heard, stays fenced, and europe-2 stays the primary (no
    writes until it answers). It once became the primary, unfenced, and took writes on the
    old timeline: a split brain (found by an audit)."""
    choice = choose_primary("europe-2", [says("europe-1", False, 1), says("europe-2", None)],
                            {"europe-1"}, timeline_floor=floor)
    assert (choice.primary, choice.fenced) == ("europe-2", frozenset({"europe-1"}))
    assert choice.reason is ChoiceReason.STALE_ONLY


def test_a_node_on_an_older_timeline_than_seen_is_not_chosen_even_unfenced() -> None:
    """A router that saw timeline 2 writable never goes back to a node writable on timeline 1
    (one it never fenced: it had not answered while timeline 2 was writable)."""
    choice = choose_primary("europe-2", [says("europe-1", False, 1), says("europe-2", None)],
                            set(), timeline_floor=2)
    assert (choice.primary, choice.fenced) == ("europe-2", frozenset({"europe-1"}))


def test_a_current_primary_on_a_stale_timeline_is_fenced_too() -> None:
    """A router restarted after a failover starts from router.toml's `primary` entry,
    europe-1: the old primary, back and writable on timeline 1, while europe-2 (timeline 2,
    remembered as the floor) is silent. europe-1 stays named the primary but is fenced: it
    takes no writes (it took them, and they were lost when timeline 2 came back)."""
    choice = choose_primary("europe-1", [says("europe-1", False, 1), says("europe-2", None)],
                            set(), timeline_floor=2)
    assert (choice.primary, choice.fenced) == ("europe-1", frozenset({"europe-1"}))
    assert choice.reason is ChoiceReason.STALE_ONLY and "fenced" in choice.detail
    # It stays fenced while it is silent, and while it is writable on the old timeline ...
    silent = choose_primary("europe-1", [says("europe-1", None), says("europe-2", None)],
                            choice.fenced, timeline_floor=2)
    assert silent.fenced == frozenset({"europe-1"})
    # ... and europe-2 is followed when it answers; europe-1 stays fenced.
    back = choose_primary("europe-1", [says("europe-1", False, 1), says("europe-2", False, 2)],
                          choice.fenced, timeline_floor=2)
    assert (back.primary, back.fenced) == ("europe-2", frozenset({"europe-1"}))
    # Rejoined (a standby), it is no longer fenced.
    rejoined = choose_primary("europe-2", [says("europe-1", True), says("europe-2", False, 2)],
                              back.fenced, timeline_floor=2)
    assert (rejoined.primary, rejoined.fenced) == ("europe-2", frozenset())


def state(name: str, in_recovery: bool | None, received: int | None = None,
          replayed: int | None = None, timeline: int | None = None) -> ShardNodeState:
    return ShardNodeState(name, in_recovery, received, replayed, timeline)


def test_promotes_the_replica_with_the_most_wal_received() -> None:
    step = decide_promotion("eu-1", [state("eu-1", None), state("eu-2", True, 900, 800),
                                     state("eu-3", True, 850, 850)])
    assert step == PromoteNow("eu-2", 900, step.reason) and isinstance(step, PromoteNow)


@pytest.mark.parametrize(("stale", "floor"), [({"eu-1"}, 0), (set(), 2)])
def test_an_old_primary_back_is_not_adopted_as_a_promotion(stale: set[str], floor: int) -> None:
    """eu-2 (timeline 2) is the primary that died; eu-1, the primary before it, is back and
    writable on timeline 1 (fenced, or older than the floor); eu-3 streamed from eu-2. The
    promoter adopted eu-1 as "promoted before", re-pointed eu-3 at it (which cannot follow an
    older timeline) and promoted nothing: the shard had no primary until eu-2 came back."""
    nodes = [state("eu-1", False, timeline=1), state("eu-2", None),
             state("eu-3", True, 900, 900)]
    step = decide_promotion("eu-2", nodes, stale, floor)
    assert isinstance(step, PromoteNow) and step.replica == "eu-3"
    # A node really promoted since (a newer timeline) is still adopted.
    promoted = [*nodes[:2], state("eu-3", False, timeline=3)]
    adopted = decide_promotion("eu-2", promoted, stale, floor)
    assert isinstance(adopted, Adopt) and adopted.node == "eu-3"


def test_ties_go_to_the_lowest_name() -> None:
    step = decide_promotion("eu-1", [state("eu-3", True, 5, 5), state("eu-2", True, 5, 5)])
    assert isinstance(step, PromoteNow) and step.replica == "eu-2"


def test_a_node_already_promoted_is_adopted_so_a_second_promoter_promotes_nothing() -> None:
    # The first promoter promoted eu-2; the second one, under the same locks, finds it out of
    # recovery and must not promote eu-3 too.
    step = decide_promotion("eu-1", [state("eu-1", None), state("eu-2", False, None, 1000, 2),
                                     state("eu-3", True, 990, 990)])
    assert isinstance(step, Adopt) and step.node == "eu-2"
    # idempotent: asked again on the same snapshot, the same answer
    assert decide_promotion("eu-1", [state("eu-1", None), state("eu-2", False, None, 1000, 2),
                                     state("eu-3", True, 990, 990)]) == step


def test_a_primary_that_answers_writable_again_stops_the_failover() -> None:
    step = decide_promotion("eu-1", [state("eu-1", False, None, 10, 1), state("eu-2", True, 9, 9)])
    assert isinstance(step, GiveUp) and "writable again" in step.reason


def test_no_replica_answers_gives_up() -> None:
    step = decide_promotion("eu-1", [state("eu-1", None), state("eu-2", None)])
    assert isinstance(step, GiveUp)
