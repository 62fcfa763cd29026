"""Every message of the protocol as a small dataclass, with its wire layout: a MessagePack array
`[type_code, id, field, ...]` whose fields are positional (cheap to decode). Decoders ignore
trailing elements they do not know and unknown keys in maps (forward compatibility)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from protocol.errors import MalformedFrame, UnknownMessageType

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


class MessageType(IntEnum):
    HELLO = 1
    HELLO_OK = 2
    PING = 3
    PONG = 4
    QUERY = 10
    BATCH = 11
    BEGIN = 12
    COMMIT = 13
    ROLLBACK = 14
    DOC = 15
    ADMIN = 16
    ROWS = 32
    STATUS = 33
    ERROR = 34
    TX_STARTED = 35
    DOC_REPLY = 36
    ADMIN_REPLY = 37


class QueryKind(StrEnum):
    FETCH = "fetch"  # reply is Rows
    EXECUTE = "execute"  # reply is Status


class Consistency(StrEnum):
    SESSION = "session"  # default: any node that has applied the session's ryw LSNs
    STRONG = "strong"  # the primary
    REPLICA = "replica"  # any replica (or the primary), possibly stale


_CONSISTENCY: dict[Any, Consistency] = {c.value: c for c in Consistency}


class Isolation(StrEnum):
    READ_COMMITTED = "read_committed"
    REPEATABLE_READ = "repeatable_read"
    SERIALIZABLE = "serializable"


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"


_QUERY_KINDS: dict[Any, QueryKind] = {k.value: k for k in QueryKind}
_ROLES: dict[Any, Role] = {r.value: r for r in Role}


# --- small validators: they raise ValueError/TypeError, which decoding turns into MalformedFrame


def _str(v: Any) -> str:
    if type(v) is not str:
        raise TypeError("expected str")
    return v


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    return _str(v)


def _uint(v: Any) -> int:
    if type(v) is not int or v < 0:
        raise TypeError("expected unsigned int")
    return v


def _opt_uint(v: Any) -> int | None:
    return None if v is None else _uint(v)


def _list(v: Any) -> list[Any]:
    if type(v) is not list:
        raise TypeError("expected array")
    return v


def _map(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if type(v) is not dict:
        raise TypeError("expected map")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise TypeError("expected bool")
    return v


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """Where a statement ran. Wire: `[shard, node, role]` (or nil when not applicable)."""

    shard: str
    node: str
    role: Role

    @classmethod
    def from_wire(cls, v: Any) -> RouteInfo | None:
        if v is None:
            return None
        items = _list(v)
        return cls(_str(items[0]), _str(items[1]), _ROLES[items[2]])


def route_to_wire(route: RouteInfo | None) -> list[str] | None:
    return None if route is None else [route.shard, route.node, route.role.value]


@dataclass(slots=True)
class Hints:
    """Routing and execution hints of a request. Wire: a map holding only non-default keys."""

    shard: str | None = None  # "shard": run on this shard (by name)
    shard_key: Any = None  # "shard_key": a shard-key value; the router derives the shard
    consistency: Consistency = Consistency.SESSION  # "consistency"
    ryw: dict[str, int] | None = None  # "ryw": {shard: lsn} the session has written up to
    idempotency_key: str | None = None  # "idem"
    timeout_ms: int | None = None  # "timeout_ms"
    tx: int | None = None  # "tx": run inside this open transaction
    want_rows: bool = True  # "want_rows": false = the client discards rows (Status suffices)

    def to_wire(self) -> dict[str, Any]:
        m: dict[str, Any] = {}
        if self.shard is not None:
            m["shard"] = self.shard
        if self.shard_key is not None:
            m["shard_key"] = self.shard_key
        if self.consistency is not Consistency.SESSION:
            m["consistency"] = self.consistency.value
        if self.ryw:
            m["ryw"] = self.ryw
        if self.idempotency_key is not None:
            m["idem"] = self.idempotency_key
        if self.timeout_ms is not None:
            m["timeout_ms"] = self.timeout_ms
        if self.tx is not None:
            m["tx"] = self.tx
        if not self.want_rows:
            m["want_rows"] = False
        return m

    @classmethod
    def from_wire(cls, v: Any) -> Hints:
        hints = cls()
        if not v:
            _map(v)  # nil or {} (but not some other falsy value)
            return hints
        # Hot path: only the keys present are read and checked; enums via dict lookup.
        for key, value in _map(v).items():
            if key == "shard":
                hints.shard = _opt_str(value)
            elif key == "ryw":
                if value is not None:
                    hints.ryw = {_str(k): _uint(lsn) for k, lsn in _map(value).items()}
            elif key == "consistency":
                hints.consistency = _CONSISTENCY[value]
            elif key == "shard_key":
                hints.shard_key = value
            elif key == "idem":
                hints.idempotency_key = _opt_str(value)
            elif key == "timeout_ms":
                hints.timeout_ms = _opt_uint(value)
            elif key == "tx":
                hints.tx = _opt_uint(value)
            elif key == "want_rows":
                hints.want_rows = _bool(value)
        return hints


# ------------------------------------------------------------------------------- requests


@dataclass(slots=True)
class Hello:
    """client -> router, first message. Wire: [1, id, versions, client_name, token]."""

    id: int
    versions: list[int]
    client_name: str = ""
    token: str | None = None

    def to_wire(self) -> list[Any]:
        return [MessageType.HELLO, self.id, self.versions, self.client_name, self.token]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Hello:
        return cls(b[1], [_uint(x) for x in _list(b[2])], _str(b[3]), _opt_str(b[4]))


@dataclass(slots=True)
class Ping:
    """Either direction. Wire: [3, id]; answered by Pong with the same id."""

    id: int

    def to_wire(self) -> list[Any]:
        return [MessageType.PING, self.id]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Ping:
        return cls(b[1])


@dataclass(slots=True)
class Query:
    """Wire: [10, id, kind, sql, params, hints]. kind "fetch" -> Rows, "execute" -> Status."""

    id: int
    sql: str
    params: list[Any] = field(default_factory=list)
    kind: QueryKind = QueryKind.FETCH
    hints: Hints = field(default_factory=Hints)

    def to_wire(self) -> list[Any]:
        return [
            MessageType.QUERY,
            self.id,
            self.kind.value,
            self.sql,
            self.params,
            self.hints.to_wire(),
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Query:
        return cls(b[1], _str(b[3]), _list(b[4]), _QUERY_KINDS[b[2]], Hints.from_wire(b[5]))


@dataclass(slots=True)
class Batch:
    """Statements run in order on one shard (executemany). Reply: Status with the summed
    rowcount and the last statement's status. Wire: [11, id, [[sql, params], ...], hints]."""

    id: int
    statements: list[tuple[str, list[Any]]]
    hints: Hints = field(default_factory=Hints)

    def to_wire(self) -> list[Any]:
        stmts = [[sql, params] for sql, params in self.statements]
        return [MessageType.BATCH, self.id, stmts, self.hints.to_wire()]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Batch:
        stmts = [(_str(s[0]), _list(s[1])) for s in map(_list, _list(b[2]))]
        return cls(b[1], stmts, Hints.from_wire(b[3]))


@dataclass(slots=True)
class Begin:
    """Open a transaction on one shard (hints.shard or hints.shard_key say which).
    Reply: TxStarted. Wire: [12, id, hints, isolation|nil, read_only]."""

    id: int
    hints: Hints = field(default_factory=Hints)
    isolation: Isolation | None = None
    read_only: bool = False

    def to_wire(self) -> list[Any]:
        iso = None if self.isolation is None else self.isolation.value
        return [MessageType.BEGIN, self.id, self.hints.to_wire(), iso, self.read_only]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Begin:
        iso = None if b[3] is None else Isolation(_str(b[3]))
        return cls(b[1], Hints.from_wire(b[2]), iso, _bool(b[4]))


@dataclass(slots=True)
class Commit:
    """Wire: [13, id, tx]. Reply: Status ("COMMIT", with ryw_token if the tx wrote)."""

    id: int
    tx: int

    def to_wire(self) -> list[Any]:
        return [MessageType.COMMIT, self.id, self.tx]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Commit:
        return cls(b[1], _uint(b[2]))


@dataclass(slots=True)
class Rollback:
    """Wire: [14, id, tx]. Reply: Status ("ROLLBACK")."""

    id: int
    tx: int

    def to_wire(self) -> list[Any]:
        return [MessageType.ROLLBACK, self.id, self.tx]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Rollback:
        return cls(b[1], _uint(b[2]))


@dataclass(slots=True)
class Doc:
    """A document-store operation. Wire: [15, id, collection, op, args, hints]. Reply: DocReply."""

    id: int
    collection: str
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    hints: Hints = field(default_factory=Hints)

    def to_wire(self) -> list[Any]:
        return [
            MessageType.DOC,
            self.id,
            self.collection,
            self.op,
            self.args,
            self.hints.to_wire(),
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Doc:
        return cls(b[1], _str(b[2]), _str(b[3]), _map(b[4]), Hints.from_wire(b[5]))


@dataclass(slots=True)
class Admin:
    """Wire: [16, id, op, args]. op "topology" -> AdminReply with the cluster view."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [MessageType.ADMIN, self.id, self.op, self.args]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Admin:
        return cls(b[1], _str(b[2]), _map(b[3]))


# -------------------------------------------------------------------------------- replies


@dataclass(slots=True)
class HelloOk:
    """Wire: [2, id, version, node, server_info]."""

    id: int
    version: int
    node: str
    server_info: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [MessageType.HELLO_OK, self.id, self.version, self.node, self.server_info]

    @classmethod
    def from_wire(cls, b: list[Any]) -> HelloOk:
        return cls(b[1], _uint(b[2]), _str(b[3]), _map(b[4]))


@dataclass(slots=True)
class Pong:
    """Wire: [4, id]."""

    id: int

    def to_wire(self) -> list[Any]:
        return [MessageType.PONG, self.id]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Pong:
        return cls(b[1])


@dataclass(slots=True)
class Rows:
    """Wire: [32, id, columns, rows, status, route, ryw_token]; rows are arrays in column order."""

    id: int
    columns: list[str]
    rows: list[list[Any]]
    status: str = ""
    route: RouteInfo | None = None
    ryw_token: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            MessageType.ROWS,
            self.id,
            self.columns,
            self.rows,
            self.status,
            route_to_wire(self.route),
            self.ryw_token,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Rows:
        columns = [_str(c) for c in _list(b[2])]
        rows = [_list(r) for r in _list(b[3])]
        return cls(b[1], columns, rows, _str(b[4]), RouteInfo.from_wire(b[5]), _opt_str(b[6]))


@dataclass(slots=True)
class Status:
    """Wire: [33, id, status, rowcount, route, ryw_token]."""

    id: int
    status: str
    rowcount: int = 0
    route: RouteInfo | None = None
    ryw_token: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            MessageType.STATUS,
            self.id,
            self.status,
            self.rowcount,
            route_to_wire(self.route),
            self.ryw_token,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Status:
        return cls(b[1], _str(b[2]), _uint(b[3]), RouteInfo.from_wire(b[4]), _opt_str(b[5]))


@dataclass(slots=True)
class Error:
    """Wire: [34, id, code, name, message, sqlstate, retryable, detail]. id 0 = connection-level
    (e.g. a protocol error after which the sender closes the connection)."""

    id: int
    code: int
    name: str
    message: str
    sqlstate: str | None = None
    retryable: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [
            MessageType.ERROR,
            self.id,
            self.code,
            self.name,
            self.message,
            self.sqlstate,
            self.retryable,
            self.detail or None,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Error:
        return cls(
            b[1], _uint(b[2]), _str(b[3]), _str(b[4]), _opt_str(b[5]), _bool(b[6]), _map(b[7])
        )


@dataclass(slots=True)
class TxStarted:
    """Wire: [35, id, tx, route]."""

    id: int
    tx: int
    route: RouteInfo | None = None

    def to_wire(self) -> list[Any]:
        return [MessageType.TX_STARTED, self.id, self.tx, route_to_wire(self.route)]

    @classmethod
    def from_wire(cls, b: list[Any]) -> TxStarted:
        return cls(b[1], _uint(b[2]), RouteInfo.from_wire(b[3]))


@dataclass(slots=True)
class DocReply:
    """Wire: [36, id, result, route, ryw_token]. result depends on op (see PROTOCOL.md)."""

    id: int
    result: Any
    route: RouteInfo | None = None
    ryw_token: str | None = None

    def to_wire(self) -> list[Any]:
        return [
            MessageType.DOC_REPLY,
            self.id,
            self.result,
            route_to_wire(self.route),
            self.ryw_token,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> DocReply:
        return cls(b[1], b[2], RouteInfo.from_wire(b[3]), _opt_str(b[4]))


@dataclass(slots=True)
class AdminReply:
    """Wire: [37, id, payload]."""

    id: int
    payload: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        return [MessageType.ADMIN_REPLY, self.id, self.payload]

    @classmethod
    def from_wire(cls, b: list[Any]) -> AdminReply:
        return cls(b[1], _map(b[2]))


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


def message_from_wire(body: Any) -> Message:
    """Turn a decoded MessagePack body into a Message, or raise a ProtocolError."""
    if type(body) is not list or len(body) < 2:
        raise MalformedFrame("a message is an array [type_code, id, ...]")
    code, request_id = body[0], body[1]
    if type(request_id) is not int or request_id < 0:
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
        raise MalformedFrame(f"malformed {name} message: {exc}", request_id=request_id) from exc
