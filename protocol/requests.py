"""Requests (client -> router). Each is an array `[type_code, id, field, ...]` on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol.fields import (
    _ISOLATIONS,
    _QUERY_KINDS,
    Hints,
    Isolation,
    MessageType,
    QueryKind,
    _bool,
    _choice,
    _list,
    _map,
    _opt_request_id,
    _opt_str,
    _str,
    _uint,
)

__all__ = ["DOC_READ_OPS", "Admin", "Batch", "Begin", "Commit", "Doc", "Hello", "Ping", "Query",
           "Rollback"]

# Document-store ops that only read: safe to send again, and they take no idempotency key.
DOC_READ_OPS = frozenset({"find", "find_one", "count", "aggregate", "distinct"})


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
            self.kind._value_,  # the plain str; `.value` is a slow descriptor on every request
            self.sql,
            self.params,
            self.hints.to_wire(),
        ]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Query:
        kind = _choice(_QUERY_KINDS, b[2], "kind")
        return cls(b[1], _str(b[3]), _list(b[4]), kind, Hints.from_wire(b[5]))


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
        iso = None if b[3] is None else _choice(_ISOLATIONS, b[3], "isolation")
        return cls(b[1], Hints.from_wire(b[2]), iso, _bool(b[4]))


@dataclass(slots=True)
class Commit:
    """Wire: [13, id, tx, request_id|nil]. Reply: Status ("COMMIT", with ryw_token if the tx
    wrote). `request_id` is a trailing field: a sender that predates it sends [.., tx]."""

    id: int
    tx: int
    request_id: str | None = None

    def to_wire(self) -> list[Any]:
        if self.request_id is None:
            return [MessageType.COMMIT, self.id, self.tx]
        return [MessageType.COMMIT, self.id, self.tx, self.request_id]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Commit:
        return cls(b[1], _uint(b[2]), _opt_request_id(b[3]) if len(b) > 3 else None)


@dataclass(slots=True)
class Rollback:
    """Wire: [14, id, tx, request_id|nil]. Reply: Status ("ROLLBACK").
    `request_id` is a trailing field: a sender that predates it sends [.., tx]."""

    id: int
    tx: int
    request_id: str | None = None

    def to_wire(self) -> list[Any]:
        if self.request_id is None:
            return [MessageType.ROLLBACK, self.id, self.tx]
        return [MessageType.ROLLBACK, self.id, self.tx, self.request_id]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Rollback:
        return cls(b[1], _uint(b[2]), _opt_request_id(b[3]) if len(b) > 3 else None)


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
    """Wire: [16, id, op, args, request_id|nil]. op "topology" -> AdminReply with the cluster
    view; op "move_user" {user_id, region} -> AdminReply with what the move did (PROTOCOL.md
    2.1). `request_id` is a trailing field: a sender that predates it sends [.., args]."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None

    def to_wire(self) -> list[Any]:
        if self.request_id is None:
            return [MessageType.ADMIN, self.id, self.op, self.args]
        return [MessageType.ADMIN, self.id, self.op, self.args, self.request_id]

    @classmethod
    def from_wire(cls, b: list[Any]) -> Admin:
        request_id = _opt_request_id(b[4]) if len(b) > 4 else None
        return cls(b[1], _str(b[2]), _map(b[3]), request_id)
