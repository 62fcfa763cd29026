"""Which node of a shard is its agreed primary, and which nodes are fenced, as a pure decision
per monitor round (`[failover] mode = "managed"`).

The agreement is recorded where it cannot be lost or contradicted: in the nodes themselves.
Every promotion starts a new PostgreSQL timeline, so the writable node on the highest
timeline is the shard's primary. Every router reaches the same answer from what the nodes say
(`pg_is_in_recovery()` and the timeline of a writable node), whatever router.toml lists as a
shard's `primary` entry and whether the router restarted since: nothing needs to be stored in
a router, and an old primary that comes back (restarted after a kill, or un-frozen after a
SIGSTOP) is writable on an older timeline, so it is fenced: it gets no writes and no reads.
A fenced node stays fenced while it cannot be asked, and until it says it is a standby
(`georoute cluster rejoin` made it one); its lag then decides when it serves reads again.
A fenced node is not chosen again unless it is writable on a timeline newer than any this
router has seen writable in the shard (`timeline_floor`, when known: it was rejoined and
promoted since),
nor is any node on a timeline older than that: when the new primary misses a probe
(frozen, busy, or its link down) while the old one is writable again, the old one stays
fenced and the shard has no writable primary until the new one answers or a newer promotion
happens. (Choosing it would take writes on a timeline the new primary's writes are not on: a
split brain, found by an audit.)

Two writable nodes on the same timeline (two promotions from one timeline: what the
promoter's locks and checks exist to prevent) cannot be told apart by their history: the
router keeps the primary it has (else the lowest name) and fences the other, and says so.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Set
from dataclasses import dataclass

__all__ = ["ChoiceReason", "NodeSays", "PrimaryChoice", "choose_primary"]


@dataclass(frozen=True, slots=True)
class NodeSays:
    """What one node said at this round's probe."""

    name: str
    in_recovery: bool | None  # None: it did not answer
    timeline: int | None  # a writable node's timeline (None: not asked, or not writable)


class ChoiceReason(enum.Enum):
    KEEP = "keep"  # the current primary is the writable node on the highest timeline
    NO_WRITABLE = "no_writable"  # no node is writable: keep the current one (down, or a standby)
    NEWER_TIMELINE = "newer_timeline"  # another node is writable on a newer timeline: follow it
    CURRENT_NOT_WRITABLE = "current_not_writable"  # the current one is not, another one is
    SPLIT_BRAIN = "split_brain"  # two writable on the same, highest timeline
    STALE_ONLY = "stale_only"  # only fenced nodes, or ones on an older timeline, are writable


@dataclass(frozen=True, slots=True)
class PrimaryChoice:
    primary: str
    fenced: frozenset[str]
    reason: ChoiceReason
    detail: str

    def changed(self, current: str) -> bool:
        return self.primary != current


def _timeline(node: NodeSays) -> int:
    return -1 if node.timeline is None else node.timeline


def choose_primary(current: str, nodes: Iterable[NodeSays],
                   fenced_before: Set[str] = frozenset(),
                   timeline_floor: int = 0) -> PrimaryChoice:
    """`timeline_floor`: the newest timeline this router has seen writable in the shard."""
    seen = list(nodes)
    writable = [n for n in seen if n.in_recovery is False]
    standby = {n.name for n in seen if n.in_recovery is True}
    # Fenced stays fenced until the node says it is a standby. The primary is fenced only
    # while no node is fit to be it and it is on a timeline older than the floor (below).
    sticky = {name for name in fenced_before if name not in standby}
    if not writable:  # (a current primary fenced as stale stays fenced while silent)
        fenced = frozenset(sticky)
        return PrimaryChoice(current, fenced, ChoiceReason.NO_WRITABLE,
                             f"no node is writable; {current} stays the primary")
    # A fenced node comes back only on a timeline newer than any seen writable here (it
    # was rejoined and promoted since); any other only on the newest timeline seen, or later.
    candidates = [n for n in writable
                  if (n.name not in sticky and _timeline(n) >= timeline_floor)
                  or (timeline_floor > 0 and _timeline(n) > timeline_floor)]
    if not candidates:
        # Even the current primary, when it is among them: a router restarted (its floor
        # remembered, router/ha/memory.py) starts from router.toml's `primary` entry, which
        # may be the old primary, back and writable, while the promoted one is silent.
        stale = sorted(n.name for n in writable)
        fenced = frozenset(sticky | set(stale))
        return PrimaryChoice(current, fenced, ChoiceReason.STALE_ONLY,
                             f"only {', '.join(stale)} is writable, fenced or on a timeline "
                             f"older than {timeline_floor}: {current} stays the primary "
                             + ("but is fenced " if current in fenced else "")
                             + "(no writes until it, or a newer promotion, answers)")
    writable = candidates
    top = max(_timeline(n) for n in writable)
    best = sorted(n.name for n in writable if _timeline(n) == top)
    if len(best) > 1:
        primary = current if current in best else best[0]
        reason = ChoiceReason.SPLIT_BRAIN
        detail = (f"{', '.join(best)} are all writable on timeline {top}: keeping {primary}, "
                  f"fencing the others (rejoin the stale one)")
    else:
        [primary] = best
        if primary == current:
            reason, detail = ChoiceReason.KEEP, f"{primary} is writable on timeline {top}"
        elif any(n.name == current for n in writable):
            reason = ChoiceReason.NEWER_TIMELINE
            detail = (f"{primary} is writable on timeline {top}, newer than {current}'s: "
                      f"{current} is fenced")
        else:
            reason = ChoiceReason.CURRENT_NOT_WRITABLE
            detail = f"{primary} is writable on timeline {top}; {current} is not"
    fenced = frozenset((sticky | {n.name for n in seen if n.in_recovery is False})
                       - {primary})
    return PrimaryChoice(primary, fenced, reason, detail)
