"""Two-phase commit across shards, the pure half: the transaction ids and their PostgreSQL
names, the coordinator's state machine (a table), and what recovery does with a prepared
transaction it finds. router/engine/twophase.py carries it out; README ("Transactions over
several shards") says why the decision lives where it does.

A distributed transaction has a global id (`gtid`). One of the shards it wrote is its
*coordinator*: that shard's branch is never prepared; it inserts the decision row
`(gtid, 'commit')` into `georoute_tx_decisions` and commits like any transaction, and that
commit *is* the decision. Every other branch that wrote (a *participant*) is prepared under
the name `georoute:<gtid>:<coordinator>:<participant>`, so any router node that finds it in
`pg_prepared_xacts` knows where to read its fate. No decision row means no commit: after a
grace period a recovering router inserts `(gtid, 'abort')` with ON CONFLICT DO NOTHING, and
whichever of the two inserts commits first wins (the coordinator's plain INSERT then fails,
and it rolls everything back: presumed abort).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from router.core.errors import IllegalTransition

__all__ = [
    "GID_PREFIX",
    "GID_SQL_PATTERN",
    "Gid",
    "IllegalTransition",
    "Recorded",
    "RecoveryAction",
    "TxEvent",
    "TxState",
    "advance",
    "forgettable",
    "format_gid",
    "parse_gid",
    "recovery_action",
]

GID_PREFIX = "georoute"
# For `pg_prepared_xacts.gid LIKE ...`: only our own prepared transactions, never another
# program's on the same server.
GID_SQL_PATTERN = GID_PREFIX + ":%"
_GTID = re.compile(r"^[0-9a-f]{32}$")
# A shard name goes into a SQL string literal and is split on ':' when read back.
_SHARD = re.compile(r"^[A-Za-z0-9_.-]{1,63}$")
_MAX_GID_BYTES = 200  # PostgreSQL's GIDSIZE, less its terminating byte


@dataclass(frozen=True, slots=True)
class Gid:
    """The name of one prepared branch: which transaction, where its decision is, whose
    branch it is."""

    gtid: str
    coordinator: str
    participant: str

    def __str__(self) -> str:
        return format_gid(self.gtid, self.coordinator, self.participant)


def format_gid(gtid: str, coordinator: str, participant: str) -> str:
    """`georoute:<gtid>:<coordinator>:<participant>`; ValueError for a part that would not
    read back (or could not sit in a SQL literal)."""
    if not _GTID.match(gtid):
        raise ValueError(f"a gtid is 32 lowercase hex digits, not {gtid!r}")
    for shard in (coordinator, participant):
        if not _SHARD.match(shard):
            raise ValueError(f"shard name {shard!r} cannot be part of a prepared "
                             "transaction's name (letters, digits, _ . - only)")
    gid = f"{GID_PREFIX}:{gtid}:{coordinator}:{participant}"
    if len(gid) > _MAX_GID_BYTES:
        raise ValueError(f"prepared transaction name too long: {gid!r}")
    return gid


def parse_gid(gid: str) -> Gid | None:
    """The parts of one of our names; None for a name that is not ours (another program's
    prepared transaction is not ours to touch)."""
    parts = gid.split(":")
    if len(parts) != 4 or parts[0] != GID_PREFIX:
        return None
    _, gtid, coordinator, participant = parts
    if not _GTID.match(gtid) or not _SHARD.match(coordinator) or not _SHARD.match(participant):
        return None
    return Gid(gtid, coordinator, participant)


# ---- the coordinator: every transition in one table ------------------------------------------


class TxState(enum.Enum):
    OPEN = "open"  # statements run; branches open as they are needed
    PREPARING = "preparing"  # PREPARE on each participant, the decision row on the coordinator
    PREPARED = "prepared"  # every participant prepared; nothing decided yet
    COMMITTED_DECISION = "decided"  # the coordinator's branch committed: the outcome is commit
    COMMITTED = "committed"  # every participant committed too (or left to recovery to commit)
    ABORTING = "aborting"  # rolling every branch back
    ABORTED = "aborted"  # nothing of it committed anywhere
    IN_DOUBT = "in_doubt"  # the coordinator's commit was sent and its fate cannot be read now


class TxEvent(enum.Enum):
    COMMIT_REQUESTED = "commit_requested"  # several shards wrote: two-phase commit begins
    ROLLBACK_REQUESTED = "rollback_requested"
    ALL_PREPARED = "all_prepared"
    PREPARE_FAILED = "prepare_failed"  # a participant refused (or was lost): none commits
    DECISION_COMMITTED = "decision_committed"  # the coordinator's COMMIT returned
    DECISION_REFUSED = "decision_refused"  # its COMMIT failed, or an abort was recorded first
    DECISION_UNREADABLE = "decision_unreadable"  # its COMMIT was lost, and so is its shard
    PHASE_TWO_DONE = "phase_two_done"  # COMMIT PREPARED everywhere, or handed to recovery
    ROLLED_BACK = "rolled_back"


_TRANSITIONS: dict[tuple[TxState, TxEvent], TxState] = {
    (TxState.OPEN, TxEvent.COMMIT_REQUESTED): TxState.PREPARING,
    (TxState.OPEN, TxEvent.ROLLBACK_REQUESTED): TxState.ABORTING,
    (TxState.PREPARING, TxEvent.ALL_PREPARED): TxState.PREPARED,
    (TxState.PREPARING, TxEvent.PREPARE_FAILED): TxState.ABORTING,
    (TxState.PREPARED, TxEvent.DECISION_COMMITTED): TxState.COMMITTED_DECISION,
    (TxState.PREPARED, TxEvent.DECISION_REFUSED): TxState.ABORTING,
    (TxState.PREPARED, TxEvent.DECISION_UNREADABLE): TxState.IN_DOUBT,
    (TxState.COMMITTED_DECISION, TxEvent.PHASE_TWO_DONE): TxState.COMMITTED,
    (TxState.ABORTING, TxEvent.ROLLED_BACK): TxState.ABORTED,
}


def advance(state: TxState, event: TxEvent) -> TxState:
    after = _TRANSITIONS.get((state, event))
    if after is None:
        raise IllegalTransition(f"two-phase commit: {event.value} in state {state.value}")
    return after


# ---- recovery: what to do with a prepared branch found on a primary ---------------------------


class Recorded(enum.Enum):
    """What the coordinator's shard says of a transaction."""

    COMMIT = "commit"
    ABORT = "abort"
    NOTHING = "nothing"  # no decision row
    UNREADABLE = "unreadable"  # the coordinator's primary could not be asked


class RecoveryAction(enum.Enum):
    COMMIT_PREPARED = "commit"
    ROLLBACK_PREPARED = "rollback"
    WAIT = "wait"  # too young to judge, or its decision cannot be read now
    RECORD_ABORT = "record_abort"  # insert 'abort' unless a decision is there; then obey the row


def recovery_action(recorded: Recorded, age_seconds: float, grace_seconds: float) -> RecoveryAction:
    """The fate of one prepared branch, from its decision row and its age (seconds since it
    was prepared, by its server's clock). A commit is only ever obeyed, never presumed; an
    abort is presumed only after `grace_seconds`, so a live coordinator between its PREPAREs
    and its decision is not hurried into losing its transaction."""
    if recorded is Recorded.COMMIT:
        return RecoveryAction.COMMIT_PREPARED
    if recorded is Recorded.ABORT:
        return RecoveryAction.ROLLBACK_PREPARED
    if recorded is Recorded.UNREADABLE or age_seconds < grace_seconds:
        return RecoveryAction.WAIT
    return RecoveryAction.RECORD_ABORT


def forgettable(
    decided: Mapping[str, Iterable[str]], in_doubt: Iterable[str], answered: Iterable[str],
    shards: Iterable[str],
) -> set[str]:
    """The decision rows (by gtid, with the participant shards each names) that may be
    deleted: those read *before* the prepared transactions were listed (`decided`), none of
    whose branches is still prepared (`in_doubt`), when every shard's primary answered that
    listing, and every participant the row names is among them. A commit row is read only
    once its coordinator committed, which it does only after every participant has
    prepared: so a branch of it that is still unresolved is in the listing. A row naming a
    shard this router does not know (router.toml without a region added since, before its
    reload) is kept: the branch there was not listed, and without the row the next sweep
    that sees it would presume an abort and roll back a committed transaction's part
    (found by an audit). (Deleting an abort row is always safe: no row reads as abort once
    the grace period is over.)"""
    listed = set(answered)
    if set(shards) - listed:
        return set()
    out = set(in_doubt)
    return {gtid for gtid, participants in decided.items()
            if gtid not in out and set(participants) <= listed}

