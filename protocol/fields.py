"""The building blocks of messages: type codes, enums, routing hints and route info, and the
small validators decoding uses (they raise TypeError/ValueError, which decoding turns into
MalformedFrame)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "REQUEST_ID_MAX_CHARS",
    "Consistency",
    "Hints",
    "Isolation",
    "MessageType",
    "QueryKind",
    "Role",
    "RouteInfo",
    "check_request_id",
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


def _shard_names(v: Any) -> list[str] | None:
    """The "shards" hint: nil, or one or more distinct shard names."""
    if v is None:
        return None
    names = [_str(name) for name in _list(v)]
    if not names:
        raise ValueError("expected one or more shard names")
    if len(set(names)) != len(names):
        raise ValueError("names a shard more than once")
    return names


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise TypeError("expected bool")
    return v


def _choice(table: dict[Any, Any], v: Any, what: str) -> Any:
    """`table[v]`, or a ValueError that names the field and the values it takes."""
    try:
        return table[v]
    except (KeyError, TypeError):  # TypeError: an unhashable value (a list, a map)
        known = ", ".join(sorted(str(k) for k in table))
        raise ValueError(f"{what} must be one of {known}, not {v!r}") from None


_ISOLATIONS: dict[Any, Isolation] = {i.value: i for i in Isolation}

# A request id (PROTOCOL.md 2.2): the caller's name for a request, written into the router's log
# lines about it. Printable ASCII without spaces, so that it can neither break a log line nor
# forge one; bounded, so that it costs a log line little.
REQUEST_ID_MAX_CHARS = 128
_REQUEST_ID = re.compile(rf"[\x21-\x7e]{{1,{REQUEST_ID_MAX_CHARS}}}")


def check_request_id(v: Any) -> str:
    """`v` if it is a valid request id, else a TypeError or ValueError saying why."""
    if type(v) is not str:
        raise TypeError(f"a request id is a str, not {type(v).__name__}")
    if _REQUEST_ID.fullmatch(v) is None:
        raise ValueError(f"a request id is 1 to {REQUEST_ID_MAX_CHARS} printable ASCII "
                         "characters without spaces")
    return v


def _opt_request_id(v: Any) -> str | None:
    return None if v is None else check_request_id(v)


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
    shards: list[str] | None = None  # "shards": a read on just these shards, merged
    request_id: str | None = None  # "request_id": the caller's id for it, in the router's logs

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
        if self.shards is not None:
            m["shards"] = list(self.shards)
        if self.request_id is not None:
            m["request_id"] = self.request_id
        return m

    @classmethod
    def from_wire(cls, v: Any) -> Hints:
        hints = cls()
        if not v:
            _map(v)  # nil or {} (but not some other falsy value)
            return hints
        # Hot path: only the keys present are read and checked; enums via dict lookup.
        key: Any = None
        try:
            for key, value in _map(v).items():
                if key == "shard":
                    hints.shard = _opt_str(value)
                elif key == "ryw":
                    if value is not None:
                        hints.ryw = {_str(k): _uint(lsn) for k, lsn in _map(value).items()}
                elif key == "consistency":
                    hints.consistency = _choice(_CONSISTENCY, value, "consistency")
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
                elif key == "shards":
                    hints.shards = _shard_names(value)
                elif key == "request_id":
                    hints.request_id = _opt_request_id(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"hints.{key}: {exc}") from None
        return hints
