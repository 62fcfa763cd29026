"""A fuzz of the frame decoder with Hypothesis, beyond test_protocol_codec.py's random bytes
and random bodies: valid frames of every message type, then mutated (bits flipped, bytes
replaced, inserted, deleted, a slice repeated, a length prefix changed, the tail cut),
requests whose parameters are ext values of every code with random payloads, and fields of
the wrong type in otherwise valid requests. Whatever comes in, the decoder yields messages or
`Rejected` for a request it refuses, or raises one typed ProtocolError and stays poisoned;
never another exception. `hypothesis.target` steers the search towards inputs that decode
further before failing (more messages out, more bytes consumed): coverage-guided in spirit.
A brief run in `make test`; `pytest -m chaos` runs 20 times more (about 3 minutes)."""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

import protocol as p
from protocol.values import ExtCode
from tests.support.reliability import record
from tests.unit.test_protocol_codec import chunked, messages

QUICK = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LONG = settings(max_examples=3000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

cuts = st.lists(st.integers(min_value=0), max_size=6)
# What the inputs came to, for the report: messages out, requests refused, typed errors.
OUTCOMES: collections.Counter[str] = collections.Counter()


def _feed(pieces: list[bytes], max_frame_bytes: int = 1 << 16) -> int:
    """Feed the pieces; returns how many messages came out. Fails on anything but messages,
    Rejected and one typed, poisoning ProtocolError."""
    decoder = p.FrameDecoder(max_frame_bytes)
    out = 0
    try:
        for piece in pieces:
            for message in decoder.feed(piece):
                assert isinstance(message, p.Message | p.Rejected), message
                if isinstance(message, p.Rejected):
                    assert isinstance(message.code, p.ErrorCode)
                    OUTCOMES["rejected " + message.code.name] += 1
                else:
                    OUTCOMES["messages"] += 1
                out += 1
    except p.ProtocolError as exc:
        assert isinstance(exc.code, p.ErrorCode)
        OUTCOMES["error " + exc.code.name] += 1
        assert decoder.poisoned
        with pytest.raises(p.ProtocolError):
            decoder.feed(b"\x00")
        out += len(getattr(exc, "messages", []))
    return out


# ---- mutations of valid frames -------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0), st.integers(0, 7)),
    st.tuples(st.just("replace"), st.integers(0), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0), st.integers(1, 16)),
    st.tuples(st.just("repeat"), st.integers(0), st.integers(1, 32)),
    st.tuples(st.just("length"), st.integers(0), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("cut"), st.integers(0), st.just(0)),
)


def _mutate(data: bytes, how: tuple[str, int, Any]) -> bytes:
    if not data:
        return data
    kind, at, arg = how
    at %= len(data)
    b = bytearray(data)
    if kind == "flip":
        b[at] ^= 1 << arg
    elif kind == "replace":
        b[at] = arg
    elif kind == "insert":
        b[at:at] = arg
    elif kind == "delete":
        del b[at:at + arg]
    elif kind == "repeat":
        b[at:at] = b[at:at + arg]
    elif kind == "length":  # a frame's prefix, if `at` falls on one, else any 4 bytes
        b[at:at + 4] = struct.pack(">I", arg)
    else:
        del b[at:]
    return bytes(b)


def _mutated_frames(msgs: list[p.Message], hows: list[tuple[str, int, Any]],
                    pieces: list[int]) -> None:
    data = p.encode_many(msgs)
    for how in hows:
        data = _mutate(data, how)
    decoded = _feed(chunked(data, pieces))
    target(float(decoded), label="messages decoded from mutated frames")


@QUICK
@given(st.lists(messages, min_size=1, max_size=5), st.lists(mutation, min_size=1, max_size=4),
       cuts)
def test_mutated_valid_frames(msgs: list[p.Message], hows: list[tuple[str, int, Any]],
                              pieces: list[int]) -> None:
    _mutated_frames(msgs, hows, pieces)


def _recorded(what: str, how: str, run: Callable[[], None]) -> None:
    """Run a Hypothesis test (every example), then record what its inputs came to."""
    OUTCOMES.clear()
    run()
    record(what, how, None, examples=LONG.max_examples, outcomes=dict(OUTCOMES))


@pytest.mark.chaos
def test_mutated_valid_frames_long() -> None:
    @LONG
    @given(st.lists(messages, min_size=1, max_size=8),
           st.lists(mutation, min_size=1, max_size=8), cuts)
    def fuzz(msgs: list[p.Message], hows: list[tuple[str, int, Any]],
             pieces: list[int]) -> None:
        _mutated_frames(msgs, hows, pieces)

    _recorded("frame decoder fuzz: mutated valid frames",
              "Hypothesis (target-guided): valid frames of every type with bits flipped, bytes "
              "replaced, inserted, deleted, repeated, length prefixes changed, tails cut; fed "
              "in random pieces", fuzz)


# ---- ext values and wrong types inside valid requests -------------------------------------

ext_values = st.builds(msgpack.ExtType, st.sampled_from([*map(int, ExtCode), 0, 17, 99, 127]),
                       st.binary(max_size=48))
wrong = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary() | ext_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12,
)


def _frame(fields: list[Any]) -> bytes:
    body = msgpack.packb(fields, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _typed_requests(code: int, rid: int, replace_at: int, value: Any, params: list[Any],
                    pieces: list[int]) -> None:
    """A valid request of type `code` with one field replaced by `value` (any type), and a
    Query whose parameters are ext values of every code with random payloads."""
    requests: dict[p.MessageType, list[Any]] = {
        p.MessageType.HELLO: [1, rid, [1], "fuzz", "token"],
        p.MessageType.QUERY: [10, rid, "SELECT $1", params, "fetch", {}],
        p.MessageType.BATCH: [11, rid, [["SELECT 1", params]], {}],
        p.MessageType.BEGIN: [12, rid, {"shard": "europe"}, None, False],
        p.MessageType.COMMIT: [13, rid, 7],
        p.MessageType.DOC: [15, rid, "course_content", "find", {"filter": {}}, {}],
        p.MessageType.ADMIN: [16, rid, "topology", {}],
        p.MessageType.PING: [3, rid],
    }
    fields = list(requests[p.MessageType(code)])
    if replace_at and len(fields) > 2:
        fields[2 + replace_at % (len(fields) - 2)] = value
    elif replace_at:
        fields.append(value)  # a field past the known ones (ignored, as PROTOCOL.md says)
    data = _frame(fields) + _frame([10, rid + 1, "SELECT $1", params, "fetch", {}])
    decoded = _feed(chunked(data, pieces))
    target(float(decoded), label="requests decoded with wrong types")


request_codes = st.sampled_from([1, 3, 10, 11, 12, 13, 15, 16])


@QUICK
@given(request_codes, st.integers(1, 2**32), st.integers(0, 8), wrong,
       st.lists(ext_values | wrong, max_size=4), cuts)
def test_wrong_types_and_ext_values_in_valid_requests(code: int, rid: int, at: int, value: Any,
                                                      params: list[Any],
                                                      pieces: list[int]) -> None:
    _typed_requests(code, rid, at, value, params, pieces)


@pytest.mark.chaos
def test_wrong_types_and_ext_values_in_valid_requests_long() -> None:
    @LONG
    @given(request_codes, st.integers(1, 2**32), st.integers(0, 8), wrong,
           st.lists(ext_values | wrong, max_size=6), cuts)
    def fuzz(code: int, rid: int, at: int, value: Any, params: list[Any],
             pieces: list[int]) -> None:
        _typed_requests(code, rid, at, value, params, pieces)

    _recorded("frame decoder fuzz: wrong types and ext values in valid requests",
              "Hypothesis (target-guided): each request type with one field of any type, and "
              "parameters that are ext values of every code with random payloads", fuzz)
