"""Heartbeats on the wire: a UDP endpoint that sends this node's view to every peer each
interval, and feeds what arrives through protocol.heartbeat's checks into the membership
machine (router/core/membership.py). The decisions live there; this module only does the I/O,
keeps the counts and logs each change of a peer's state with its reason.

Each interval it also asks router/core/failover.py what managed failover would decide for each
shard, and reports and logs that plan. With `[failover] mode = "managed"`, a plan that names
this node as the promoter is handed to router/ha/promoter.py, which carries it out; in the other
modes the plan is only advisory. Otherwise, in managed mode, the node that
router/core/reconcile.py's `reconciler_for` names has its promoter look for standbys that still
stream from a former primary (after a promotion that could not re-point them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from protocol.heartbeat import (
    Heartbeat,
    HeartbeatReceiver,
    HeartbeatSender,
    HeartbeatTooLarge,
    RejectReason,
    ReportedHealth,
)
from router.clock import SYSTEM_CLOCK, Clock
from router.config import Config, FailoverMode
from router.core.failover import Decision, FailoverView, Promote, ReplicaView, plan_failover
from router.core.health import NodeHealth
from router.core.membership import Membership, MembershipTiming, MemberView, PeerState, Transition
from router.core.reconcile import reconciler_for
from router.errors import ConfigError
from router.ha.memory import FailoverMemory
from router.ha.promoter import Promoter
from router.ha.topology import Topology

__all__ = ["MIN_SECRET_BYTES", "HeartbeatService", "heartbeat_key"]

log = logging.getLogger("georoute.heartbeat")

MIN_SECRET_BYTES = 16  # HMAC-SHA256 keys shorter than this are guessable offline

_REPORTED = {
    NodeHealth.UP: ReportedHealth.UP,
    NodeHealth.SUSPECT: ReportedHealth.SUSPECT,
    NodeHealth.DOWN: ReportedHealth.DOWN,
}


def heartbeat_key(config: Config) -> bytes:
    env = config.heartbeat.secret_env
    secret = os.environ.get(env, "").encode()
    if len(secret) < MIN_SECRET_BYTES:
        state = "is not set" if not secret else f"holds {len(secret)} bytes"
        raise ConfigError("heartbeat.secret_env", f"environment variable {env} {state}; "
                          f"heartbeat peers need a shared secret of at least "
                          f"{MIN_SECRET_BYTES} bytes")
    return secret


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        # e.g. ECONNREFUSED from an ICMP reply when a peer's port is closed: the peer's
        # silence is what counts, and membership times it.
        log.debug("heartbeat socket: %s", exc)


class HeartbeatService:
    """This node's heartbeats: started with the daemon, stopped with it. Every timer reads
    `clock` (router/clock.py): the interval between rounds, the silences membership judges,
    how long a primary has been down for the failover plan, and the incarnation (its wall
    time). `topology` is asked each round, as a reload replaces the daemon's."""

    def __init__(self, config: Config, topology: Callable[[], Topology],
                 clock: Clock = SYSTEM_CLOCK, memory: FailoverMemory | None = None) -> None:
        h = config.heartbeat
        key = heartbeat_key(config)  # first: no secret, no start
        self._config = h
        self._topology = topology
        self._clock = clock
        self.node_name = config.router.node_name
        self.peer_addresses = h.peer_addresses()
        # wall clock on purpose: newer across restarts (nanoseconds, as the protocol carries);
        # with a memory (managed mode), never older than the last start's, whatever the clock
        wall = int(clock.wall() * 1_000_000_000)
        self.incarnation = wall if memory is None else memory.next_incarnation(wall)
        self.sender = HeartbeatSender(key, self.node_name, self.incarnation)
        self.receiver = HeartbeatReceiver(key, self.peer_addresses)
        timing = MembershipTiming(h.suspect_after_seconds, h.dead_after_seconds,
                                  h.alive_after_heartbeats)
        self.membership = Membership(self.node_name, self.peer_addresses, timing)
        self.sent = 0
        self.send_errors = 0
        self.received = 0
        self.dropped: dict[RejectReason, int] = dict.fromkeys(RejectReason, 0)
        self._down_after = config.failover.down_after_seconds
        # shard -> (its primary, when this node first saw that primary DOWN, on our clock)
        self._down_since: dict[str, tuple[str, float]] = {}
        self.plans: dict[str, Decision] = {}
        managed = FailoverMode(config.failover.mode) is FailoverMode.MANAGED
        self.promoter = Promoter(config, topology, clock) if managed else None
        self._transport: asyncio.DatagramTransport | None = None
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._clock.monotonic()

    @property
    def address(self) -> tuple[str, int] | None:
        """Where heartbeats are received, once started (the port chosen when the config says 0)."""
        if self._transport is None:
            return None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self._received), local_addr=(self._config.host, self._config.port)
        )
        self._transport = transport
        self._task = asyncio.create_task(self._run(), name="heartbeat")
        log.info("heartbeats on udp %s:%d to %s (incarnation %d)", self._config.host,
                 self._config.port, ", ".join(self._config.peers), self.incarnation)

    async def stop(self) -> None:
        if self.promoter is not None:
            await self.promoter.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ---- sending ---------------------------------------------------------------------------

    def own_view(self) -> MemberView:
        topology = self._topology()
        nodes = {n.name: _REPORTED[n.health] for n in topology.nodes()}
        primaries = {s.name: s.primary.name for s in topology.shards.values()}
        return MemberView(nodes, primaries)

    async def _run(self) -> None:
        while True:
            try:
                self.beat()
            except Exception:  # the heartbeat must never die
                log.exception("sending heartbeats failed")
            await self._clock.sleep(self._config.interval_seconds)

    def beat(self) -> None:
        """One round: re-judge the peers' silence, then send our view to each of them."""
        self._log(self.membership.tick(self.now()))
        view = self.own_view()
        self.membership.own_view = view
        self._plan(view)
        try:
            data = self.sender.encode(view.nodes, view.primaries)
        except HeartbeatTooLarge as exc:
            log.error("heartbeat not sent: %s", exc)
            return
        transport = self._transport
        if transport is None:
            return
        for address in self.peer_addresses.values():
            try:
                transport.sendto(data, address)
                self.sent += 1
            except OSError as exc:
                self.send_errors += 1
                log.debug("heartbeat to %s:%d not sent: %s", *address, exc)

    def _plan(self, view: MemberView) -> None:
        """What managed failover decides now, per shard: carried out by the promoter when this
        node is the one to promote (mode "managed"), else only reported."""
        now = self.now()
        members = self.membership.alive_members()
        for shard in self._topology().shards.values():
            primary = shard.primary.name
            if view.nodes.get(primary) is ReportedHealth.DOWN:
                known = self._down_since.get(shard.name)
                if known is None or known[0] != primary:
                    self._down_since[shard.name] = known = (primary, now)
                down_for = now - known[1]
            else:
                self._down_since.pop(shard.name, None)
                down_for = 0.0
            replicas = tuple(ReplicaView(r.name, _REPORTED[r.health], r.in_recovery is True,
                                         r.replay_lsn) for r in shard.replicas)
            decision = plan_failover(FailoverView(
                self.node_name, self.membership.cluster_size, members, shard.name, primary,
                down_for, self._down_after, replicas,
            ))
            acting = self.promoter is not None
            if decision != self.plans.get(shard.name):
                log.info("failover plan for %s (%s): %s", shard.name,
                         "managed" if acting else "advisory, not carried out",
                         _describe(decision))
            self.plans[shard.name] = decision
            if (self.promoter is not None and isinstance(decision, Promote)
                    and decision.promoter == self.node_name):
                self.promoter.request(decision)
            elif self.promoter is not None:
                turn = reconciler_for(self.node_name, self.membership.cluster_size, members,
                                      shard.name, primary)
                if turn.actor == self.node_name:
                    self.promoter.reconcile(shard)

    # ---- receiving -------------------------------------------------------------------------

    def _received(self, data: bytes) -> None:
        self.received += 1
        got = self.receiver.receive(data)
        if isinstance(got, Heartbeat):
            change = self.membership.heard(got, self.now())
            self._log([change] if change is not None else [])
            return
        self.dropped[got.reason] += 1
        log.debug("heartbeat dropped (%s%s): %s", got.reason.value,
                  f", from {got.peer}" if got.peer else "", got.detail)

    def _log(self, changes: list[Transition]) -> None:
        for change in changes:
            level = logging.INFO if change.after is PeerState.ALIVE else logging.WARNING
            log.log(level, "peer %s is %s (was %s: %s)", change.peer, change.after.value,
                    change.before.value, change.event.value)

    # ---- reports ---------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """For the admin topology view."""
        m = self.membership
        return {
            "node": self.node_name,
            "incarnation": self.incarnation,
            "cluster_size": m.cluster_size,
            "majority": m.majority,
            "quorum": m.has_quorum(),
            "peers": m.snapshot(self.now()),
            "dropped": {reason.value: n for reason, n in self.dropped.items()},
            "failover_plans": {shard: _plan_report(d) for shard, d in self.plans.items()},
            "promoter": self.promoter.report() if self.promoter is not None else None,
        }


def _describe(decision: Decision) -> str:
    if isinstance(decision, Promote):
        return f"{decision.promoter} would promote {decision.replica}: {decision.reason}"
    return f"no action ({decision.reason.value}): {decision.detail}"


def _plan_report(decision: Decision) -> dict[str, Any]:
    if isinstance(decision, Promote):
        return {"action": "promote", "promoter": decision.promoter, "replica": decision.replica,
                "replica_lsn": decision.replica_lsn, "voters": list(decision.voters)}
    return {"action": "none", "reason": decision.reason.value, "detail": decision.detail}
