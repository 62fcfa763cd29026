"""The heartbeat datagram between router nodes, sans I/O: a view in, authenticated bytes out;
bytes in, a `Heartbeat` or a typed `Rejected` out (never an exception). See PROTOCOL.md.

A datagram is `HMAC-SHA256(key, body) || body`, the body a MessagePack array
`[1, node, incarnation, sequence, {db node: health}, {shard: primary}]`. The receiver keeps the
last accepted (incarnation, sequence) of each peer, so a datagram is accepted once at most.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "FORMAT_VERSION",
    "MAC_BYTES",
    "MAX_DATAGRAM_BYTES",
    "MAX_NAME_CHARS",
    "Heartbeat",
    "HeartbeatReceiver",
    "HeartbeatSender",
    "HeartbeatTooLarge",
    "RejectReason",
    "Rejected",
    "ReportedHealth",
    "encode_heartbeat",
]

FORMAT_VERSION = 1
MAC_BYTES = 32  # SHA-256
# One datagram, never fragmented: IPv6's minimum MTU (1280) less its and UDP's headers, with
# room to spare. Three shards of two nodes take about 250 bytes.
MAX_DATAGRAM_BYTES = 1200
MAX_NAME_CHARS = 64  # router node, database node and shard names
_MAX_U64 = (1 << 64) - 1


class ReportedHealth(enum.IntEnum):
    """A database node's health as the sending router sees it (router.core.health.NodeHealth)."""

    UP = 0
    SUSPECT = 1
    DOWN = 2


class RejectReason(enum.Enum):
    OVERSIZED = "oversized"  # longer than the limit: not even authenticated
    FORGED = "forged"  # the MAC does not match the body under our key
    MALFORMED = "malformed"  # too short for a MAC, or an authenticated body we cannot read
    UNKNOWN_PEER = "unknown_peer"  # authenticated, but not from a configured peer
    REPLAYED = "replayed"  # (incarnation, sequence) not newer than the last accepted


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str
    peer: str | None = None  # the claimed sender, once the MAC has proved the claim


@dataclass(frozen=True, slots=True)
class Heartbeat:
    node: str  # the sending router node's name
    incarnation: int  # its start time in ns: a restarted node is newer
    sequence: int  # counts up from 0 within one incarnation
    nodes: Mapping[str, ReportedHealth] = field(default_factory=dict)  # database node -> health
    primaries: Mapping[str, str] = field(default_factory=dict)  # shard -> primary's node name


class HeartbeatTooLarge(ValueError):
    """Our own view does not fit in one datagram (a configuration too big for heartbeats)."""


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or not key:
        raise ValueError("a heartbeat key must be non-empty bytes")
    return key


class HeartbeatSender:
    """Numbers and signs this node's heartbeats. `incarnation` comes from the caller (its
    start time in ns), so a restarted node's heartbeats are newer than any it sent before."""

    def __init__(self, key: bytes, node: str, incarnation: int,
                 max_bytes: int = MAX_DATAGRAM_BYTES) -> None:
        self._key = _check_key(key)
        self.node = node
        self.incarnation = incarnation
        self.sequence = 0
        self._max_bytes = max_bytes

    def encode(self, nodes: Mapping[str, ReportedHealth], primaries: Mapping[str, str]) -> bytes:
        """The next datagram: each call takes the next sequence number."""
        beat = Heartbeat(self.node, self.incarnation, self.sequence, nodes, primaries)
        data = encode_heartbeat(self._key, beat)
        if len(data) > self._max_bytes:
            raise HeartbeatTooLarge(f"heartbeat of {len(data)} bytes exceeds {self._max_bytes}")
        self.sequence += 1
        return data


def encode_heartbeat(key: bytes, beat: Heartbeat) -> bytes:
    body = msgpack.packb([
        FORMAT_VERSION, beat.node, beat.incarnation, beat.sequence,
        {name: int(health) for name, health in beat.nodes.items()},
        dict(beat.primaries),
    ])
    return _mac(_check_key(key), body) + body


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME_CHARS


def _u64(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_U64


def _parse_body(body: bytes) -> Heartbeat | str:
    """The heartbeat in an authenticated body, or why it is not one."""
    try:
        obj = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several types (ExtraData, FormatError, ...)
        return f"not MessagePack: {type(exc).__name__}"
    if not isinstance(obj, list) or len(obj) != 6:
        return "not a 6-element array"
    version, node, incarnation, sequence, nodes, primaries = obj
    if version != FORMAT_VERSION or isinstance(version, bool):
        return f"unsupported format version {version!r}"
    if not _name(node):
        return "bad node name"
    if not _u64(incarnation) or not _u64(sequence):
        return "incarnation and sequence must be unsigned 64-bit integers"
    if not isinstance(nodes, dict) or not isinstance(primaries, dict):
        return "node health and primaries must be maps"
    health: dict[str, ReportedHealth] = {}
    for name, value in nodes.items():
        if not _name(name) or not _u64(value) or value > max(ReportedHealth):
            return f"bad health entry {name!r}"
        health[name] = ReportedHealth(value)
    for shard, primary in primaries.items():
        if not _name(shard) or not _name(primary):
            return f"bad primary entry {shard!r}"
    return Heartbeat(node, incarnation, sequence, health, dict(primaries))


class HeartbeatReceiver:
    """Checks datagrams from the configured peers. Cheap checks first: the size before the
    MAC, the MAC before parsing, so unauthenticated bytes are never unpacked."""

    def __init__(self, key: bytes, peers: Collection[str],
                 max_bytes: int = MAX_DATAGRAM_BYTES) -> None:
        self._key = _check_key(key)
        self._peers = frozenset(peers)
        self._max_bytes = max_bytes
        self._last: dict[str, tuple[int, int]] = {}  # peer -> last accepted (incarnation, seq)

    def last_accepted(self, peer: str) -> tuple[int, int] | None:
        return self._last.get(peer)

    def receive(self, data: bytes) -> Heartbeat | Rejected:
        """Never raises: any input gives a Heartbeat (now the peer's newest) or a Rejected."""
        if len(data) > self._max_bytes:
            return Rejected(RejectReason.OVERSIZED, f"{len(data)} bytes > {self._max_bytes}")
        if len(data) <= MAC_BYTES:
            return Rejected(RejectReason.MALFORMED, f"only {len(data)} bytes")
        mac, body = data[:MAC_BYTES], data[MAC_BYTES:]
        if not hmac.compare_digest(mac, _mac(self._key, body)):
            return Rejected(RejectReason.FORGED, "MAC mismatch")
        parsed = _parse_body(bytes(body))
        if isinstance(parsed, str):
            return Rejected(RejectReason.MALFORMED, parsed)
        if parsed.node not in self._peers:
            return Rejected(RejectReason.UNKNOWN_PEER, "not a configured peer", parsed.node)
        stamp = (parsed.incarnation, parsed.sequence)
        last = self._last.get(parsed.node)
        if last is not None and stamp <= last:
            why = f"(incarnation, sequence) {stamp} not newer than {last}"
            return Rejected(RejectReason.REPLAYED, why, parsed.node)
        self._last[parsed.node] = stamp
        return parsed
