"""Which router nodes are alive, from their heartbeats, as a pure state machine on a clock the
caller passes in. Every transition lives in the table below; `Membership` keeps each peer's
state and newest view, and answers the quorum questions failover asks (router/core/failover.py).

Timing, with the defaults (interval 0.5 s):
- ALIVE -> SUSPECT after `suspect_after` (2 s) without a heartbeat: four datagrams in a row
  lost or late, so one lost datagram (1 s of silence) flips nothing.
- SUSPECT -> DEAD after `dead_after` (5 s) of silence in all.
- SUSPECT -> ALIVE on the next heartbeat: a suspect was only late, and nothing was decided
  on it (only ALIVE peers count towards a quorum).
- DEAD -> ALIVE only after `alive_after` (3) heartbeats in a row, each within `suspect_after`
  of the one before: a peer that flaps (a datagram now and then through a bad link) stays
  DEAD rather than swinging the quorum each time one gets through.
Peers start DEAD ("never heard"): a node counts nobody but itself until it hears them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from protocol.heartbeat import Heartbeat, ReportedHealth

__all__ = [
    "MemberView",
    "Membership",
    "MembershipTiming",
    "PeerEvent",
    "PeerState",
    "PeerStatus",
    "Transition",
    "next_peer_state",
]


class PeerState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class PeerEvent(enum.Enum):
    HEARTBEAT = "heartbeat"  # a heartbeat, not yet `alive_after` in a row
    HEARTBEAT_STREAK = "heartbeat_streak"  # `alive_after` or more heartbeats in a row
    SILENT = "silent"  # no heartbeat for `suspect_after`
    SILENT_LONG = "silent_long"  # no heartbeat for `dead_after`


_TRANSITIONS: dict[tuple[PeerState, PeerEvent], PeerState] = {
    (PeerState.ALIVE, PeerEvent.HEARTBEAT): PeerState.ALIVE,
    (PeerState.ALIVE, PeerEvent.HEARTBEAT_STREAK): PeerState.ALIVE,
    (PeerState.ALIVE, PeerEvent.SILENT): PeerState.SUSPECT,
    (PeerState.ALIVE, PeerEvent.SILENT_LONG): PeerState.DEAD,  # e.g. our own loop stalled
    (PeerState.SUSPECT, PeerEvent.HEARTBEAT): PeerState.ALIVE,
    (PeerState.SUSPECT, PeerEvent.HEARTBEAT_STREAK): PeerState.ALIVE,
    (PeerState.SUSPECT, PeerEvent.SILENT): PeerState.SUSPECT,
    (PeerState.SUSPECT, PeerEvent.SILENT_LONG): PeerState.DEAD,
    (PeerState.DEAD, PeerEvent.HEARTBEAT): PeerState.DEAD,
    (PeerState.DEAD, PeerEvent.HEARTBEAT_STREAK): PeerState.ALIVE,
    (PeerState.DEAD, PeerEvent.SILENT): PeerState.DEAD,
    (PeerState.DEAD, PeerEvent.SILENT_LONG): PeerState.DEAD,
}


def next_peer_state(state: PeerState, event: PeerEvent) -> PeerState:
    return _TRANSITIONS[(state, event)]


@dataclass(frozen=True, slots=True)
class MembershipTiming:
    suspect_after: float = 2.0  # seconds of silence
    dead_after: float = 5.0  # seconds of silence, > suspect_after
    alive_after: int = 3  # heartbeats in a row that bring a DEAD peer back

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after < self.dead_after:
            raise ValueError("need 0 < suspect_after < dead_after")
        if self.alive_after < 1:
            raise ValueError("alive_after must be at least 1")


@dataclass(frozen=True, slots=True)
class MemberView:
    """What one router node (a peer, or this node) sees of the database nodes."""

    nodes: Mapping[str, ReportedHealth] = field(default_factory=dict)
    primaries: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class PeerStatus:
    name: str
    state: PeerState = PeerState.DEAD
    last_heard: float | None = None  # our clock, when its newest heartbeat arrived
    streak: int = 0  # heartbeats in a row, each within suspect_after of the one before
    incarnation: int | None = None
    view: MemberView = field(default_factory=MemberView)
    since: float | None = None  # our clock, when it entered `state` (None: from the start)


@dataclass(frozen=True, slots=True)
class Transition:
    peer: str
    before: PeerState
    after: PeerState
    event: PeerEvent


class Membership:
    """This node and its configured peers. Not thread-safe; one event loop drives it."""

    def __init__(self, self_name: str, peers: Iterable[str], timing: MembershipTiming) -> None:
        self.self_name = self_name
        self.timing = timing
        self.peers: dict[str, PeerStatus] = {name: PeerStatus(name) for name in peers}
        if self_name in self.peers:
            raise ValueError(f"{self_name} is this node, not a peer")
        self.own_view = MemberView()

    # ---- events ----------------------------------------------------------------------------

    def heard(self, beat: Heartbeat, now: float) -> Transition | None:
        """An accepted heartbeat (protocol.heartbeat.HeartbeatReceiver checked it)."""
        peer = self.peers.get(beat.node)
        if peer is None:  # the receiver only accepts configured peers
            return None
        gap = None if peer.last_heard is None else now - peer.last_heard
        in_a_row = gap is not None and gap <= self.timing.suspect_after
        if peer.incarnation is not None and beat.incarnation != peer.incarnation:
            in_a_row = False  # a restarted node starts its streak again
        peer.streak = peer.streak + 1 if in_a_row else 1
        peer.last_heard = now
        peer.incarnation = beat.incarnation
        peer.view = MemberView(dict(beat.nodes), dict(beat.primaries))
        streak = peer.streak >= self.timing.alive_after
        return self._apply(peer, PeerEvent.HEARTBEAT_STREAK if streak else PeerEvent.HEARTBEAT,
                           now)

    def tick(self, now: float) -> list[Transition]:
        """Re-judge every peer's silence at `now`; call it at least every interval."""
        changes = []
        for peer in self.peers.values():
            if peer.last_heard is None:
                continue  # never heard: DEAD from the start, nothing to time
            silence = now - peer.last_heard
            if silence >= self.timing.dead_after:
                event = PeerEvent.SILENT_LONG
            elif silence >= self.timing.suspect_after:
                event = PeerEvent.SILENT
            else:
                continue
            change = self._apply(peer, event, now)
            if change is not None:
                changes.append(change)
        return changes

    def _apply(self, peer: PeerStatus, event: PeerEvent, now: float) -> Transition | None:
        after = next_peer_state(peer.state, event)
        if after is peer.state:
            return None
        change = Transition(peer.name, peer.state, after, event)
        peer.state, peer.since = after, now
        return change

    # ---- quorum ----------------------------------------------------------------------------

    @property
    def cluster_size(self) -> int:
        """Configured router nodes, this one included."""
        return len(self.peers) + 1

    @property
    def majority(self) -> int:
        return self.cluster_size // 2 + 1

    def alive_members(self) -> dict[str, MemberView]:
        """This node and its ALIVE peers, with what each sees. A SUSPECT peer is left out: a
        decision on a quorum must not rest on a node that may already be gone."""
        members = {self.self_name: self.own_view}
        members.update((p.name, p.view) for p in self.peers.values()
                       if p.state is PeerState.ALIVE)
        return members

    def has_quorum(self) -> bool:
        return len(self.alive_members()) >= self.majority

    def counts(self) -> dict[PeerState, int]:
        out = dict.fromkeys(PeerState, 0)
        for peer in self.peers.values():
            out[peer.state] += 1
        return out

    def snapshot(self, now: float) -> list[dict[str, object]]:
        return [
            {
                "name": p.name,
                "state": p.state.value,
                "silent_seconds": None if p.last_heard is None else round(now - p.last_heard, 3),
                "incarnation": p.incarnation,
                "nodes": {name: health.name.lower() for name, health in p.view.nodes.items()},
                "primaries": dict(p.view.primaries),
            }
            for p in self.peers.values()
        ]
