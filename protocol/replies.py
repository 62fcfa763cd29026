"""Replies (router -> client). Each is an array `[type_code, id, field, ...]` on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.fields import (
    MessageType,
    RouteInfo,
    _bool,
    _map,
    _opt_str,
    _str,
    _uint,
    route_to_wire,
)

__all__ = ["AdminReply", "DocReply", "Error", "HelloOk", "Pong", "Rows", "Status", "TxStarted"]


def _tokens(value: Any) -> list[str] | None:
    """`ryw_tokens`: nil, or an array of "<shard>:<lsn>" strings (PROTOCOL.md section 5)."""
    if value is None:
        return None
    if type(value) is not list:
        raise TypeError("expected array")
    for token in value:
        if type(token) is not str:
            raise TypeError("expected str")
    return value


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
    """Wire: [32, id, columns, rows, status, route, ryw_token, column_types, ryw_tokens]; rows
    are arrays in column order. `column_types` names each column's PostgreSQL type ("text:"
    before it when the values are that type's text output), or is nil when unknown.
    `ryw_tokens`: every shard's token when the request wrote on several, else nil."""

    id: int
    columns: list[str]
    rows: list[list[Any]]
    status: str = ""
    route: RouteInfo | None = None
    ryw_token: str | None = None
    column_types: list[str] | None = None
    ryw_tokens: list[str] | None = None

    def to_wire(self) -> list[Any]:
        return [
            MessageType.ROWS,
            self.id,
            self.columns,
            self.rows,
            self.status,
            route_to_wire(self.route),
            self.ryw_token,
            self.column_types,
            self.ryw_tokens,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Rows:
        # The client's hot path: the same checks as _list/_str, inline, and the decoded lists
        # are kept rather than copied.
        columns = b[2]
        if type(columns) is not list:
            raise TypeError("expected array")
        for column in columns:
            if type(column) is not str:
                raise TypeError("expected str")
        rows = b[3]
        if type(rows) is not list:
            raise TypeError("expected array")
        for row in rows:
            if type(row) is not list:
                raise TypeError("expected array")
        status = b[4]
        if type(status) is not str:
            raise TypeError("expected str")
        route = None if b[5] is None else RouteInfo.from_wire(b[5])
        token = b[6]
        if token is not None and type(token) is not str:
            raise TypeError("expected str")
        types = b[7] if len(b) > 7 else None  # absent from a router older than the field
        if types is not None:
            if type(types) is not list or len(types) != len(columns):
                raise TypeError("expected one type per column")
            for name in types:
                if type(name) is not str:
                    raise TypeError("expected str")
        tokens = _tokens(b[8]) if len(b) > 8 else None  # absent from an older router
        return cls(b[1], columns, rows, status, route, token, types, tokens)


@dataclass(slots=True)
class Status:
    """Wire: [33, id, status, rowcount, route, ryw_token, ryw_tokens]; `ryw_tokens`, every
    shard's token when the request wrote on several (a commit over several shards), else
    nil."""

    id: int
    status: str
    rowcount: int = 0
    route: RouteInfo | None = None
    ryw_token: str | None = None
    ryw_tokens: list[str] | None = None

    def to_wire(self) -> list[Any]:
        return [
            MessageType.STATUS,
            self.id,
            self.status,
            self.rowcount,
            route_to_wire(self.route),
            self.ryw_token,
            self.ryw_tokens,
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Status:
        tokens = _tokens(b[6]) if len(b) > 6 else None  # absent from an older router
        return cls(b[1], _str(b[2]), _uint(b[3]), RouteInfo.from_wire(b[4]), _opt_str(b[5]),
                   tokens)


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
