"""Peer membership on an injected clock: hysteresis both ways, the transition table, quorum."""

from __future__ import annotations

import pytest

from protocol.heartbeat import Heartbeat, ReportedHealth
from router.core.membership import (
    Membership,
    MembershipTiming,
    MemberView,
    PeerEvent,
    PeerState,
    next_peer_state,
)

TIMING = MembershipTiming(suspect_after=2.0, dead_after=5.0, alive_after=3)
INTERVAL = 0.5


class Beats:
    """A peer's heartbeats, numbered as its HeartbeatSender would number them."""

    def __init__(self, name: str, incarnation: int = 1) -> None:
        self.name, self.incarnation, self.sequence = name, incarnation, 0

    def next(self, primaries: dict[str, str] | None = None) -> Heartbeat:
        self.sequence += 1
        return Heartbeat(self.name, self.incarnation, self.sequence, {}, primaries or {})


def alive_peer(m: Membership, beats: Beats, start: float) -> float:
    """Brings a peer ALIVE with `alive_after` heartbeats; returns the clock after them."""
    now = start
    for _ in range(TIMING.alive_after):
        m.heard(beats.next(), now)
        now += INTERVAL
    assert m.peers[beats.name].state is PeerState.ALIVE
    return now - INTERVAL


def test_every_state_and_event_has_a_transition() -> None:
    for state in PeerState:
        for event in PeerEvent:
            assert isinstance(next_peer_state(state, event), PeerState)


def test_peers_start_dead_and_need_a_streak_to_come_alive() -> None:
    m = Membership("r1", ["r2"], TIMING)
    b = Beats("r2")
    assert m.peers["r2"].state is PeerState.DEAD
    assert m.heard(b.next(), 0.0) is None
    assert m.heard(b.next(), 0.5) is None
    change = m.heard(b.next(), 1.0)
    assert change is not None and (change.before, change.after) == (PeerState.DEAD,
                                                                    PeerState.ALIVE)


def test_one_lost_datagram_flips_nothing() -> None:
    m = Membership("r1", ["r2"], TIMING)
    b = Beats("r2")
    now = alive_peer(m, b, 0.0)
    # One datagram lost: the next arrives two intervals later; ticks every 0.1 s meanwhile.
    for step in range(1, 11):
        assert m.tick(now + step * 0.1) == []
    m.heard(b.next(), now + 2 * INTERVAL)
    assert m.peers["r2"].state is PeerState.ALIVE


def test_silence_makes_a_peer_suspect_then_dead_at_the_configured_bounds() -> None:
    m = Membership("r1", ["r2"], TIMING)
    now = alive_peer(m, Beats("r2"), 0.0)
    assert m.tick(now + 1.99) == []
    [change] = m.tick(now + 2.0)
    assert (change.after, change.event) == (PeerState.SUSPECT, PeerEvent.SILENT)
    assert m.tick(now + 4.99) == []
    [change] = m.tick(now + 5.0)
    assert (change.before, change.after) == (PeerState.SUSPECT, PeerState.DEAD)
    assert m.tick(now + 60) == []


def test_a_suspect_comes_back_on_one_heartbeat() -> None:
    m = Membership("r1", ["r2"], TIMING)
    b = Beats("r2")
    now = alive_peer(m, b, 0.0)
    m.tick(now + 3.0)
    assert m.peers["r2"].state is PeerState.SUSPECT
    change = m.heard(b.next(), now + 3.1)
    assert change is not None and change.after is PeerState.ALIVE


def test_a_dead_peer_that_flaps_stays_dead() -> None:
    m = Membership("r1", ["r2"], TIMING)
    b = Beats("r2")
    now = alive_peer(m, b, 0.0)
    now += 10
    m.tick(now)
    assert m.peers["r2"].state is PeerState.DEAD
    # A datagram gets through every 3 s (more than suspect_after apart): never a streak.
    for _ in range(10):
        now += 3.0
        m.heard(b.next(), now)
        m.tick(now)
        assert m.peers["r2"].state is PeerState.DEAD
    # Back to a steady beat (after another long gap): alive after alive_after heartbeats.
    now += 3.0
    for i in range(TIMING.alive_after - 1):
        now += INTERVAL
        m.heard(b.next(), now)
        assert m.peers["r2"].state is PeerState.DEAD, i
    now += INTERVAL
    m.heard(b.next(), now)
    assert m.peers["r2"].state is PeerState.ALIVE


def test_a_restarted_peer_starts_its_streak_again() -> None:
    m = Membership("r1", ["r2"], TIMING)
    now = alive_peer(m, Beats("r2", incarnation=1), 0.0)
    now += 10
    m.tick(now)
    restarted = Beats("r2", incarnation=2)
    m.heard(restarted.next(), now)
    m.heard(restarted.next(), now + INTERVAL)
    assert m.peers["r2"].state is PeerState.DEAD
    m.heard(restarted.next(), now + 2 * INTERVAL)
    assert m.peers["r2"].state is PeerState.ALIVE
    assert m.peers["r2"].incarnation == 2


def test_quorum_counts_this_node_and_alive_peers_only() -> None:
    m = Membership("r1", ["r2", "r3", "r4", "r5"], TIMING)
    assert (m.cluster_size, m.majority) == (5, 3)
    assert not m.has_quorum()  # alone: 1 of 5
    now = alive_peer(m, Beats("r2"), 0.0)
    assert not m.has_quorum()  # 2 of 5
    b3 = Beats("r3")
    now = alive_peer(m, b3, now)
    assert m.has_quorum() and set(m.alive_members()) == {"r1", "r2", "r3"}
    m.heard(b3.next({"europe": "europe-1"}), now + 1.0)
    m.tick(now + 2.5)  # r2 (last heard at `now` - 1.0) falls silent: SUSPECT
    assert m.peers["r2"].state is PeerState.SUSPECT
    assert m.peers["r3"].state is PeerState.ALIVE
    assert not m.has_quorum()  # a suspect does not count
    assert m.alive_members()["r3"] == MemberView({}, {"europe": "europe-1"})
    assert m.counts() == {PeerState.ALIVE: 1, PeerState.SUSPECT: 1, PeerState.DEAD: 2}


def test_a_single_node_is_its_own_majority_and_unknown_names_are_ignored() -> None:
    m = Membership("r1", [], TIMING)
    assert m.has_quorum()
    assert m.heard(Heartbeat("r9", 1, 1, {"x": ReportedHealth.UP}, {}), 0.0) is None
    with pytest.raises(ValueError):
        Membership("r1", ["r1"], TIMING)
    with pytest.raises(ValueError):
        MembershipTiming(suspect_after=2.0, dead_after=2.0)
