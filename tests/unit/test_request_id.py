"""The request id (PROTOCOL.md 2.2): how it is framed in each request, refused when invalid
(that request alone, the connection goes on), sent by the client for every request made in a
`client.request_id` context, and written into the router's log lines."""

from __future__ import annotations

import asyncio
import json
import logging

import msgpack
import pytest

import client
from client.pool import PoolConfig, RouterPool
from client.sender import Sender
from client.transaction import Transaction
from protocol import (
    Admin,
    Batch,
    Begin,
    Commit,
    Doc,
    Encoder,
    ErrorCode,
    FrameDecoder,
    Hints,
    Query,
    Rejected,
    Rollback,
    check_request_id,
    encode,
)
from router.logs import JsonFormatter, RequestIdFilter, TextFormatter, current_request_id
from tests.support.fake_server import FakeRouter, default_handler

RID = "req-7f3a:be/01.x"  # printable ASCII: a W3C traceparent or a path-like id fits too


def body(frame: bytes) -> list[object]:
    decoded = msgpack.unpackb(frame[4:], raw=False, strict_map_key=False)
    assert isinstance(decoded, list)
    return decoded


def roundtrip(message: object) -> object:
    [decoded] = FrameDecoder().feed(encode(message))  # type: ignore[arg-type]
    return decoded


# ---- framing --------------------------------------------------------------------------------


def test_absent_it_costs_nothing_on_the_wire() -> None:
    assert body(encode(Query(1, "SELECT 1"))) == [10, 1, "fetch", "SELECT 1", [], {}]
    assert body(encode(Commit(2, 5))) == [13, 2, 5]  # the frame a client before it sends
    assert body(encode(Rollback(3, 5))) == [14, 3, 5]
    assert body(encode(Admin(4, "topology"))) == [16, 4, "topology", {}]


def test_in_the_hints_of_every_request_that_has_hints() -> None:
    hints = Hints(shard="europe", request_id=RID)
    for message in (Query(1, "SELECT 1", hints=hints), Batch(2, [("SELECT 1", [])], hints),
                    Begin(3, hints), Doc(4, "course_content", "find", {}, hints)):
        wire = body(encode(message))
        assert wire[-1] == {"shard": "europe", "request_id": RID} or wire[2] == {
            "shard": "europe", "request_id": RID}
        decoded = roundtrip(message)
        assert decoded.hints.request_id == RID  # type: ignore[attr-defined]


def test_a_trailing_field_of_commit_rollback_and_admin() -> None:
    assert body(encode(Commit(2, 5, RID))) == [13, 2, 5, RID]
    assert roundtrip(Commit(2, 5, RID)) == Commit(2, 5, RID)
    assert roundtrip(Rollback(3, 5, RID)) == Rollback(3, 5, RID)
    assert body(encode(Admin(4, "topology", {}, RID))) == [16, 4, "topology", {}, RID]
    assert roundtrip(Admin(4, "topology", {}, RID)) == Admin(4, "topology", {}, RID)
    # Senders that predate it: the short forms still decode, with no id.
    assert roundtrip(Commit(2, 5)) == Commit(2, 5, None)
    # nil is allowed in the trailing field (a sender never omits a listed field).
    nil = b"".join([len(b := msgpack.packb([13, 2, 5, None])).to_bytes(4, "big"), b])
    assert FrameDecoder().feed(nil) == [Commit(2, 5, None)]


BAD = [5, "", "x" * 129, "two words", "caf\u00e9", "line\nbreak", "tab\there", ["a"]]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_an_invalid_id_refuses_that_request_alone(value: object) -> None:
    """Hints of a Query, or the trailing field of a Commit: INVALID_REQUEST naming the field;
    the decoder is not poisoned, the next frame is read."""
    decoder = FrameDecoder()
    bad_query = encode(Query(7, "SELECT 1", hints=Hints(request_id=value)))  # type: ignore[arg-type]
    bad_commit = Encoder()._frame([13, 8, 5, value])
    good = encode(Query(9, "SELECT 1", hints=Hints(request_id=RID)))
    refused_query, refused_commit, accepted = decoder.feed(bad_query + bad_commit + good)
    assert isinstance(refused_query, Rejected) and refused_query.id == 7
    assert refused_query.code is ErrorCode.INVALID_REQUEST
    assert "hints.request_id" in refused_query.message
    assert isinstance(refused_commit, Rejected) and refused_commit.id == 8
    assert refused_commit.code is ErrorCode.INVALID_REQUEST
    assert "request id" in refused_commit.message
    assert isinstance(accepted, Query) and accepted.hints.request_id == RID


def test_the_bounds_of_a_valid_id() -> None:
    assert check_request_id("x" * 128) == "x" * 128
    assert check_request_id("!~") == "!~"
    with pytest.raises(ValueError, match="1 to 128"):
        check_request_id("x" * 129)
    with pytest.raises(TypeError, match="str, not int"):
        check_request_id(12)


# ---- the client ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_the_client_refuses_an_invalid_id_before_sending(value: object) -> None:
    with pytest.raises(client.InvalidRequestError) as caught:
        with client.request_id(value):  # type: ignore[arg-type]
            pass
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert client.current_request_id() is None


async def test_the_client_sends_the_contexts_id_with_every_request() -> None:
    async with FakeRouter(default_handler) as router:
        host, port = router.address.rsplit(":", 1)
        pool = RouterPool(PoolConfig(addresses=((host, int(port)),), token="secret", size=1))
        await pool.start()
        try:
            sender = Sender(pool)
            hints = sender.hints("europe", None, None, None, None)
            with client.request_id(RID):
                async with Transaction(sender, hints, None, False, None) as tx:
                    await tx.execute("UPDATE t SET x = 1")

                async def in_a_task() -> None:  # a task inherits the context
                    q = Query(0, "SELECT 2", hints=sender.hints(None, None, None, None, None))
                    await sender.call(q, True, None)

                await asyncio.create_task(in_a_task())
            await sender.call(Query(0, "SELECT 3", hints=Hints()), True, None)  # outside it
            [begin] = router.requests(Begin)
            [commit] = router.requests(Commit)
            first, second, third = router.requests(Query)
            assert begin.hints.request_id == RID
            assert commit.request_id == RID
            assert first.hints.request_id == RID and second.hints.request_id == RID
            assert third.hints.request_id is None
        finally:
            await pool.close()


# ---- the router's log lines ------------------------------------------------------------------


def record(message: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("georoute.requests", logging.INFO, __file__, 1, message, (), None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_a_log_line_names_the_request_being_served() -> None:
    text, as_json, tagged = TextFormatter("%(message)s"), JsonFormatter(), RequestIdFilter()
    plain = record("no request here")
    tagged.filter(plain)
    assert text.format(plain) == "no request here"
    assert "request_id" not in json.loads(as_json.format(plain))
    token = current_request_id.set(RID)  # as the server does around a request's task
    try:
        inside = record("committed")
        tagged.filter(inside)
        explicit = record("fast path", request_id="other-1")  # given with extra=: kept
        tagged.filter(explicit)
    finally:
        current_request_id.reset(token)
    assert text.format(inside) == f"committed request_id={RID}"
    assert json.loads(as_json.format(inside))["request_id"] == RID
    assert text.format(explicit) == "fast path request_id=other-1"
