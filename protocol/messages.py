"""Every message of the protocol as a small dataclass, with its wire layout: a MessagePack array
`[type_code, id, field, ...]` whose fields are positional (cheap to decode). Decoders ignore
trailing elements they do not know and unknown keys in maps (forward compatibility).

Requests live in requests.py, replies in replies.py, their building blocks in fields.py; this
module names the unions and turns a decoded body into the right message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.errors import InvalidRequest, MalformedFrame, UnknownMessageType
from protocol.fields import (
    Consistency,
    Hints,
    Isolation,
    MessageType,
    QueryKind,
    Role,
    RouteInfo,
    route_to_wire,
)
from protocol.replies import AdminReply, DocReply, Error, HelloOk, Pong, Rows, Status, TxStarted
from protocol.requests import Admin, Batch, Begin, Commit, Doc, Hello, Ping, Query, Rollback

__all__ = [
    "Admin",
    "AdminReply",
    "Batch",
    "Begin",
    "Commit",
    "Consistency",
    "Doc",
    "DocReply",
    "Error",
    "Hello",
    "HelloOk",
    "Hints",
    "Isolation",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "Query",
    "QueryKind",
    "Reply",
    "Request",
    "Role",
    "Rollback",
    "RouteInfo",
    "Rows",
    "Status",
    "TxStarted",
    "message_from_wire",
    "route_to_wire",
]


Request = Hello | Ping | Query | Batch | Begin | Commit | Rollback | Doc | Admin
Reply = HelloOk | Pong | Rows | Status | Error | TxStarted | DocReply | AdminReply
Message = Request | Reply

_FROM_WIRE: dict[int, Callable[[list[Any]], Message]] = {
    MessageType.HELLO: Hello.from_wire,
    MessageType.HELLO_OK: HelloOk.from_wire,
    MessageType.PING: Ping.from_wire,
    MessageType.PONG: Pong.from_wire,
    MessageType.QUERY: Query.from_wire,
    MessageType.BATCH: Batch.from_wire,
    MessageType.BEGIN: Begin.from_wire,
    MessageType.COMMIT: Commit.from_wire,
    MessageType.ROLLBACK: Rollback.from_wire,
    MessageType.DOC: Doc.from_wire,
    MessageType.ADMIN: Admin.from_wire,
    MessageType.ROWS: Rows.from_wire,
    MessageType.STATUS: Status.from_wire,
    MessageType.ERROR: Error.from_wire,
    MessageType.TX_STARTED: TxStarted.from_wire,
    MessageType.DOC_REPLY: DocReply.from_wire,
    MessageType.ADMIN_REPLY: AdminReply.from_wire,
}


# Requests whose fields are wrong are refused one by one (InvalidRequest); a reply with
# wrong fields means a broken peer, and is fatal to the connection.
_REQUEST_CODES = frozenset(
    {
        MessageType.HELLO,
        MessageType.PING,
        MessageType.QUERY,
        MessageType.BATCH,
        MessageType.BEGIN,
        MessageType.COMMIT,
        MessageType.ROLLBACK,
        MessageType.DOC,
        MessageType.ADMIN,
    }
)


def message_from_wire(body: Any) -> Message:
    """Turn a decoded MessagePack body into a Message, or raise a ProtocolError: a fatal one
    when the body is not a message at all, InvalidRequest or UnknownMessageType when only
    this message is refused (its id is known)."""
    if type(body) is not list or len(body) < 2:
        raise MalformedFrame("a message is an array [type_code, id, ...]")
    code, request_id = body[0], body[1]
    if type(request_id) is not int or not 0 <= request_id < 2**64:
        raise MalformedFrame("message id must be an unsigned integer")
    if type(code) is not int:
        raise MalformedFrame("type code must be an integer", request_id=request_id)
    decoder = _FROM_WIRE.get(code)
    if decoder is None:
        raise UnknownMessageType(f"unknown message type {code}", request_id=request_id)
    try:
        return decoder(body)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:
        name = MessageType(code).name
        why = "missing fields" if isinstance(exc, IndexError) else str(exc)
        if code in _REQUEST_CODES:
            raise InvalidRequest(f"bad {name} request: {why}", request_id=request_id) from exc
        raise MalformedFrame(f"malformed {name} message: {why}", request_id=request_id) from exc
