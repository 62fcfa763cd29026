"""The heartbeat datagram: round-trips, and a receiver that turns any bytes into a Heartbeat
or a typed rejection (forged, replayed, oversized, malformed, unknown peer), never an error."""

from __future__ import annotations

import hashlib
import hmac

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.heartbeat import (
    MAC_BYTES,
    MAX_DATAGRAM_BYTES,
    Heartbeat,
    HeartbeatReceiver,
    HeartbeatSender,
    HeartbeatTooLarge,
    Rejected,
    RejectReason,
    ReportedHealth,
)

KEY = b"k" * 32
NODES = {"europe-1": ReportedHealth.UP, "europe-2": ReportedHealth.SUSPECT,
         "asia-1": ReportedHealth.DOWN}
PRIMARIES = {"europe": "europe-1", "asia": "asia-1"}


def signed(body: bytes, key: bytes = KEY) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest() + body


def receiver() -> HeartbeatReceiver:
    return HeartbeatReceiver(KEY, ["router-2", "router-3"])


def test_round_trip_and_sequence() -> None:
    sender = HeartbeatSender(KEY, "router-2", incarnation=1_700_000_000_000_000_000)
    rx = receiver()
    first, second = sender.encode(NODES, PRIMARIES), sender.encode(NODES, PRIMARIES)
    got = rx.receive(first)
    assert got == Heartbeat("router-2", 1_700_000_000_000_000_000, 0, NODES, PRIMARIES)
    assert isinstance(got, Heartbeat) and got.nodes["asia-1"] is ReportedHealth.DOWN
    assert rx.receive(second) == Heartbeat("router-2", sender.incarnation, 1, NODES, PRIMARIES)
    assert rx.last_accepted("router-2") == (sender.incarnation, 1)
    # Three shards of two nodes fit with room to spare.
    assert len(first) < MAX_DATAGRAM_BYTES // 3


def test_replays_are_rejected_and_change_nothing() -> None:
    sender = HeartbeatSender(KEY, "router-2", incarnation=100)
    rx = receiver()
    old, new = sender.encode(NODES, PRIMARIES), sender.encode(NODES, PRIMARIES)
    assert isinstance(rx.receive(new), Heartbeat)
    for data in (new, old):  # the same datagram again, and an older one
        got = rx.receive(data)
        assert isinstance(got, Rejected) and got.reason is RejectReason.REPLAYED
        assert got.peer == "router-2"
    assert rx.last_accepted("router-2") == (100, 1)


def test_a_restarted_peer_is_newer_and_its_old_incarnation_is_not() -> None:
    rx = receiver()
    before = HeartbeatSender(KEY, "router-2", incarnation=100)
    for _ in range(5):
        assert isinstance(rx.receive(before.encode({}, {})), Heartbeat)
    after = HeartbeatSender(KEY, "router-2", incarnation=200)  # sequence starts again at 0
    assert isinstance(rx.receive(after.encode({}, {})), Heartbeat)
    stale = rx.receive(before.encode({}, {}))  # sequence 5 of the old life
    assert isinstance(stale, Rejected) and stale.reason is RejectReason.REPLAYED
    # Peers are tracked apart: router-3's sequence 0 is not a replay of router-2's.
    assert isinstance(rx.receive(HeartbeatSender(KEY, "router-3", 50).encode({}, {})), Heartbeat)


def test_forged_unknown_oversized_malformed() -> None:
    rx = receiver()
    other_key = HeartbeatSender(b"another key", "router-2", 1).encode(NODES, PRIMARIES)
    assert rx.receive(other_key) == Rejected(RejectReason.FORGED, "MAC mismatch")
    stranger = rx.receive(HeartbeatSender(KEY, "router-9", 1).encode({}, {}))
    assert isinstance(stranger, Rejected) and stranger.reason is RejectReason.UNKNOWN_PEER
    assert stranger.peer == "router-9"
    myself = HeartbeatReceiver(KEY, ["router-2"])  # our own name is not among our peers
    mine = myself.receive(HeartbeatSender(KEY, "router-1", 1).encode({}, {}))
    assert isinstance(mine, Rejected) and mine.reason is RejectReason.UNKNOWN_PEER
    big = rx.receive(b"\0" * (MAX_DATAGRAM_BYTES + 1))
    assert isinstance(big, Rejected) and big.reason is RejectReason.OVERSIZED
    for data in (b"", b"x" * MAC_BYTES):
        short = rx.receive(data)
        assert isinstance(short, Rejected) and short.reason is RejectReason.MALFORMED
    # Authenticated (a peer holding the key) but not a heartbeat: each is malformed.
    bodies = [
        b"\xc1",  # a byte MessagePack never uses
        msgpack.packb([1, "router-2", 1, 1, {}, {}]) + b"\x00",  # trailing data
        msgpack.packb({"node": "router-2"}),
        msgpack.packb([2, "router-2", 1, 1, {}, {}]),  # a future format version
        msgpack.packb([True, "router-2", 1, 1, {}, {}]),
        msgpack.packb([1, "", 1, 1, {}, {}]),
        msgpack.packb([1, "r" * 65, 1, 1, {}, {}]),
        msgpack.packb([1, "router-2", -1, 1, {}, {}]),
        msgpack.packb([1, "router-2", 1, 1.5, {}, {}]),
        msgpack.packb([1, "router-2", 1, True, {}, {}]),
        msgpack.packb([1, "router-2", 1, 1, {"n": 3}, {}]),  # no such health
        msgpack.packb([1, "router-2", 1, 1, {"n": 0.0}, {}]),
        msgpack.packb([1, "router-2", 1, 1, {}, {"europe": 7}]),
        msgpack.packb([1, "router-2", 1, 1, [], {}]),
        msgpack.packb([1, "router-2", 1, 1, {}, {}, "extra"]),
        msgpack.packb([1, b"router-2", 1, 1, {}, {}]),
        msgpack.packb([1, "router-2", 1, 1, {1: 0}, {}], strict_types=False),
        msgpack.packb(msgpack.ExtType(5, b"x")),
    ]
    for body in bodies:
        got = rx.receive(signed(body))
        assert isinstance(got, Rejected) and got.reason is RejectReason.MALFORMED, body
    assert rx.last_accepted("router-2") is None  # nothing above moved the replay window


def test_the_sender_refuses_a_view_that_does_not_fit() -> None:
    sender = HeartbeatSender(KEY, "router-1", 1)
    huge = {f"node-{i:04d}": ReportedHealth.UP for i in range(200)}
    with pytest.raises(HeartbeatTooLarge):
        sender.encode(huge, {})
    assert sender.sequence == 0  # nothing was sent, so no number was used up
    with pytest.raises(ValueError):
        HeartbeatSender(b"", "router-1", 1)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=MAX_DATAGRAM_BYTES + 50))
def test_random_bytes_never_crash_the_receiver(data: bytes) -> None:
    got = HeartbeatReceiver(KEY, ["router-2"]).receive(data)
    assert isinstance(got, Rejected)  # without the key, nothing random authenticates


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_authenticated_bodies_never_crash_the_receiver(body: bytes) -> None:
    got = HeartbeatReceiver(KEY, ["router-2"]).receive(signed(body))
    assert isinstance(got, (Heartbeat, Rejected))


health_maps = st.dictionaries(st.text(min_size=1, max_size=20), st.sampled_from(ReportedHealth),
                              max_size=6)
primary_maps = st.dictionaries(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20),
                               max_size=3)


@settings(max_examples=200, deadline=None)
@given(health_maps, primary_maps, st.integers(0, 2**64 - 1), st.data())
def test_every_single_bit_flip_is_rejected(
    nodes: dict[str, ReportedHealth], primaries: dict[str, str], incarnation: int,
    data: st.DataObject,
) -> None:
    valid = HeartbeatSender(KEY, "router-2", incarnation).encode(nodes, primaries)
    assert isinstance(receiver().receive(valid), Heartbeat)
    bit = data.draw(st.integers(0, len(valid) * 8 - 1))
    flipped = bytearray(valid)
    flipped[bit // 8] ^= 1 << (bit % 8)
    got = receiver().receive(bytes(flipped))
    assert isinstance(got, Rejected) and got.reason is RejectReason.FORGED
