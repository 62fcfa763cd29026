"""Which standbys still stream from a former primary, and which router node re-points them: a
decision per cycle from what the nodes say now (Patroni's shape), never from what a router
remembers of a promotion. Nothing here talks to a database; router/ha/promoter.py reads and
acts (router/ha/followers.py re-points).

After a promotion the promoter re-points the shard's other standbys at once
(router/core/failover.py, `plan_followers`). One it could not reach then (it was down), one
whose re-point failed, or one that the promoting router forgot (it died or restarted) still
asks the old primary for WAL. So every heartbeat round:
- `reconciler_for`: one router node may act for a shard, by the failover's own rule: it
  hears a majority of the configured router nodes (itself included), a majority of them
  name the same primary for the shard and see it UP, and it is the lowest-named of those
  (nodes that share a snapshot name the same one, a cut-off one never acts; two whose
  snapshots briefly differ are serialised by the promoters' lock on the standby, and the
  second finds it following);
- `due_standbys`: that node looks at each standby its monitor sees UP and in recovery, once
  the shard's primary is agreed (UP, writable, not fenced); at once when it is new to this
  router or back after being unreachable, else `RECHECK_SECONDS` after the last look, or
  after a failed look `follow_retry_delay` (1 s, doubling to 60 s): a rate limit only,
  losing it means looking sooner;
- `judge_upstream`: the standby's primary_conninfo names the primary (nothing to do), a
  configured node of the shard that is not the primary (a former primary: re-point it), or
  something router.toml does not name for the shard (a cascade from elsewhere, a person's
  choice: left alone, and said once).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protocol.heartbeat import ReportedHealth
from router.core.conninfo import conninfo_targets
from router.core.errors import ConninfoError
from router.core.membership import MemberView

__all__ = [
    "FOLLOW_RETRY_FIRST_SECONDS",
    "FOLLOW_RETRY_MAX_SECONDS",
    "RECHECK_SECONDS",
    "CheckWait",
    "DueStandbys",
    "NodeSeen",
    "ReconcileTurn",
    "Upstream",
    "UpstreamJudgement",
    "due_standbys",
    "follow_retry_delay",
    "judge_upstream",
    "reconciler_for",
    "wait_after",
]

# After a look that failed (the standby did not answer, or its re-point failed), the next
# waits FOLLOW_RETRY_FIRST_SECONDS, then twice as long each time, at most
# FOLLOW_RETRY_MAX_SECONDS: never given up, never a storm.
FOLLOW_RETRY_FIRST_SECONDS = 1.0
FOLLOW_RETRY_MAX_SECONDS = 60.0
# A standby found in order (or left alone) is looked at again this long after: a person may
# point it elsewhere meanwhile. Patroni's loop_wait is 10 s too. One connection per standby
# per look, from one router node.
RECHECK_SECONDS = 10.0


# ---- which router node acts ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconcileTurn:
    shard: str
    actor: str | None  # the router node that looks at the shard's standbys now; None: nobody
    reason: str


def reconciler_for(self_name: str, cluster_size: int, members: Mapping[str, MemberView],
                   shard: str, primary: str) -> ReconcileTurn:
    """The router node entitled to re-point `shard`'s standbys at `primary` (the shard's
    primary as `self_name` knows it), from this node's snapshot of its alive peers (`members`,
    this node included): the lowest-named of the nodes that name `primary` for the shard and
    see it UP, when they are a majority of the `cluster_size` configured router nodes, as
    `plan_failover` picks its promoter among the nodes that see the primary down."""
    majority = cluster_size // 2 + 1
    alive = sorted(members)
    if self_name not in members or len(alive) < majority:
        return ReconcileTurn(shard, None, f"{len(alive)} of {cluster_size} router nodes alive "
                                          f"here, {majority} needed")
    agree = [name for name in alive if members[name].primaries.get(shard) == primary
             and members[name].nodes.get(primary) is ReportedHealth.UP]
    if len(agree) < majority:
        return ReconcileTurn(shard, None, f"{len(agree)} of {cluster_size} router nodes see "
                                          f"{primary} up as {shard}'s primary, {majority} "
                                          f"needed")
    return ReconcileTurn(shard, agree[0], f"{', '.join(agree)} see {primary} up as {shard}'s "
                                          f"primary; {agree[0]} is the lowest-named")


# ---- which standbys to look at now ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """A node of the shard as this router's monitor sees it."""

    name: str
    up: bool  # health UP (not SUSPECT, not DOWN)
    in_recovery: bool | None  # None: it did not answer the last probe
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class CheckWait:
    """When a standby is looked at next (monotonic seconds), against which primary; `failures`:
    the looks in a row that failed."""

    primary: str
    failures: int
    not_before: float


@dataclass(frozen=True, slots=True)
class DueStandbys:
    due: tuple[str, ...]  # look at these now, by name
    waits: Mapping[str, CheckWait]  # the waits to keep for the next round
    reason: str


def due_standbys(primary: str, nodes: Sequence[NodeSeen], waits: Mapping[str, CheckWait],
                 now: float) -> DueStandbys:
    """The standbys of the shard to look at now: UP, in recovery, and past their wait (none
    for one this router has not looked at since `primary` became the primary). Nothing while
    the primary is not agreed here (not UP, not writable, or fenced). A standby that is not
    UP and in recovery keeps its count of failures but not its wait: it is looked at as soon
    as it is back."""
    by_name = {n.name: n for n in nodes}
    head = by_name.get(primary)
    if head is None or not head.up or head.in_recovery is not False or head.fenced:
        return DueStandbys((), {}, f"{primary} is not an agreed, writable primary here")
    kept: dict[str, CheckWait] = {}
    due: list[str] = []
    for node in sorted(nodes, key=lambda n: n.name):
        wait = waits.get(node.name)
        if node.name == primary:
            continue
        if wait is not None and wait.primary != primary:
            wait = None  # looked at for an earlier primary: look afresh
        if not node.up or node.in_recovery is not True:
            if wait is not None:
                kept[node.name] = CheckWait(primary, wait.failures, 0.0)
            continue
        if wait is not None:
            kept[node.name] = wait
            if now < wait.not_before:
                continue
        due.append(node.name)
    return DueStandbys(tuple(due), kept,
                       f"{', '.join(due) or 'none'} due of {primary}'s standbys")


def follow_retry_delay(failures: int) -> float:
    """Seconds to wait after the `failures`-th failed look in a row (from 1)."""
    return min(FOLLOW_RETRY_FIRST_SECONDS * 2 ** max(0, failures - 1), FOLLOW_RETRY_MAX_SECONDS)


def wait_after(previous: CheckWait | None, primary: str, failed: bool, now: float) -> CheckWait:
    """The wait after a look at a standby (at `now`) that `failed` or not."""
    if not failed:
        return CheckWait(primary, 0, now + RECHECK_SECONDS)
    before = previous.failures if previous is not None and previous.primary == primary else 0
    return CheckWait(primary, before + 1, now + follow_retry_delay(before + 1))


# ---- where a standby streams from ----------------------------------------------------------


class Upstream(enum.Enum):
    PRIMARY = "primary"  # it names the shard's primary: nothing to do
    FORMER_PRIMARY = "former_primary"  # a configured node of the shard, not the primary
    NOT_CONFIGURED = "not_configured"  # somewhere router.toml does not name for the shard
    NONE = "none"  # no primary_conninfo: archive recovery only
    UNREADABLE = "unreadable"  # not libpq's form (key=value or URI): a person's to change


@dataclass(frozen=True, slots=True)
class UpstreamJudgement:
    standby: str
    upstream: Upstream
    names: tuple[str, ...]  # the configured nodes its primary_conninfo names, in its order
    detail: str

    @property
    def repoint(self) -> bool:
        return self.upstream is Upstream.FORMER_PRIMARY


def judge_upstream(standby: str, conninfo: str, addresses: Mapping[str, tuple[str, int]],
                   primary: str) -> UpstreamJudgement:
    """Where `standby` streams from, by its primary_conninfo, against the shard's configured
    nodes (`addresses`: name -> (host, port) as router.toml names them; a node is matched by
    those exactly, as the promoter writes them). A configured node other than the primary is
    a former primary, or a sibling standby: within a shard every standby streams from the
    primary (its slot is there), so both are re-pointed. Several hosts: the primary among
    them is enough (libpq tries them in turn); all of them configured and none the primary
    is a former primary."""
    if not conninfo.strip():
        return UpstreamJudgement(standby, Upstream.NONE, (),
                                 f"{standby} has no primary_conninfo: left as it is")
    try:
        targets = conninfo_targets(conninfo)
    except ConninfoError as exc:
        return UpstreamJudgement(standby, Upstream.UNREADABLE, (),
                                 f"{standby}'s primary_conninfo is not rewritten ({exc}): "
                                 f"left as it is")
    by_address = {address: name for name, address in addresses.items()}
    names = tuple(by_address.get(t, "") for t in targets)
    where = ", ".join(f"{host or '(socket)'}:{port}" for host, port in targets)
    if primary in names:
        return UpstreamJudgement(standby, Upstream.PRIMARY, names,
                                 f"{standby} streams from {primary} ({where})")
    if all(names):
        return UpstreamJudgement(standby, Upstream.FORMER_PRIMARY, names,
                                 f"{standby} still streams from {', '.join(names)}, not the "
                                 f"primary {primary}: it follows {primary}")
    return UpstreamJudgement(standby, Upstream.NOT_CONFIGURED, tuple(n for n in names if n),
                             f"{standby} streams from {where}, which is not a node of its "
                             f"shard in router.toml: left as it is")
