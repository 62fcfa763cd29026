"""`[failover] mode = "external"`: which node of a shard is its primary, learnt from what every
node says of itself (`pg_is_in_recovery()`), as a pure decision per monitor round. Something
else (Patroni, pg_auto_failover, a person) promotes; the router follows and never promotes.

The rule, per shard and round:
- follow a node only when it has answered "not in recovery" for `confirm_rounds` rounds in a
  row (a node seen writable once, e.g. mid-restart, is not enough), and
- only while the current primary is not writable itself (unreachable, or a standby now): two
  writable nodes of one shard are a split brain this router cannot settle, so it stays where
  it is and says so, rather than move writes to a node that may be the stale one.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Follow", "NodeObservation", "PrimaryWatch", "Stay", "StayReason"]


@dataclass(frozen=True, slots=True)
class NodeObservation:
    name: str
    in_recovery: bool | None  # None: the node did not answer this round


class StayReason(enum.Enum):
    PRIMARY_WRITABLE = "primary_writable"  # the primary answers, and is no standby
    NO_CANDIDATE = "no_candidate"  # no other node is writable
    NOT_CONFIRMED = "not_confirmed"  # a writable node, but not for confirm_rounds yet
    SEVERAL_WRITABLE = "several_writable"  # split brain: more than one candidate


@dataclass(frozen=True, slots=True)
class Stay:
    shard: str
    reason: StayReason
    detail: str


@dataclass(frozen=True, slots=True)
class Follow:
    shard: str
    old_primary: str
    new_primary: str
    detail: str


@dataclass(slots=True)
class PrimaryWatch:
    """One shard's watch; `observe` is called once per monitor round."""

    shard: str
    confirm_rounds: int = 3
    _writable_rounds: dict[str, int] = field(default_factory=dict)

    def observe(self, primary: str, nodes: Iterable[NodeObservation]) -> Follow | Stay:
        seen = list(nodes)
        for node in seen:  # streaks first, so every round counts whatever is decided
            writable = node.in_recovery is False
            self._writable_rounds[node.name] = (
                self._writable_rounds.get(node.name, 0) + 1 if writable else 0
            )
        current = next((n for n in seen if n.name == primary), None)
        if current is not None and current.in_recovery is False:
            others = [n.name for n in seen if n.name != primary and n.in_recovery is False]
            if others:
                return Stay(self.shard, StayReason.SEVERAL_WRITABLE,
                            f"{primary} and {', '.join(others)} are all writable: "
                            f"staying on {primary}; fence the stale one")
            return Stay(self.shard, StayReason.PRIMARY_WRITABLE, f"{primary} is writable")
        candidates = sorted(n.name for n in seen if n.name != primary and n.in_recovery is False)
        was = "unreachable" if current is None or current.in_recovery is None else "a standby"
        if not candidates:
            why = f"{primary} is {was} and no other node is writable"
            return Stay(self.shard, StayReason.NO_CANDIDATE, why)
        if len(candidates) > 1:
            return Stay(self.shard, StayReason.SEVERAL_WRITABLE,
                        f"{', '.join(candidates)} are all writable")
        [candidate] = candidates
        rounds = self._writable_rounds[candidate]
        if rounds < self.confirm_rounds:
            why = f"{candidate} writable for {rounds} of {self.confirm_rounds} rounds"
            return Stay(self.shard, StayReason.NOT_CONFIRMED, why)
        why = f"{candidate} is writable ({rounds} rounds) and {primary} is {was}"
        return Follow(self.shard, primary, candidate, why)
