"""What core's decisions refuse: a statement that cannot be parsed or run as a plain query, and
a request that cannot be routed. The request is at fault and nothing was sent to a node, so
none of these is retryable."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

from protocol.errors import ErrorCode
from router.errors import GeorouteError

__all__ = [
    "ConninfoError",
    "CoreError",
    "CrossShardError",
    "DocumentValidationError",
    "IllegalTransition",
    "MissingShardKeyError",
    "Refusal",
    "RoutingError",
    "ScatterRefused",
    "SqlParseError",
    "UnknownShardError",
    "UnsupportedStatementError",
]


class CoreError(GeorouteError):
    """Base of what core refuses (no code of its own: each subclass has one)."""


class SqlParseError(CoreError):
    """PostgreSQL's parser rejected the text (or it was too long to parse: SQLSTATE 54000,
    program_limit_exceeded). `position` is a 0-based character offset."""

    code = ErrorCode.SQL_PARSE_ERROR

    def __init__(self, message: str, position: int | None, sqlstate: str = "42601") -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.sqlstate = sqlstate

    def detail(self) -> dict[str, Any]:
        return {"position": None if self.position is None else self.position + 1}  # 1-based


class UnsupportedStatementError(CoreError):
    """A statement the router will not run through a plain query (e.g. BEGIN, several at once)."""

    code = ErrorCode.INVALID_REQUEST


class RoutingError(CoreError):
    """The request cannot be routed; the message says why. Nothing was sent to a node."""

    code = ErrorCode.INVALID_REQUEST


class MissingShardKeyError(RoutingError):
    """`wanted` says in words what would have routed it; `table`/`key` name the first sharded
    table and its first shard-key column, when there is one (the protocol's error detail)."""

    code = ErrorCode.MISSING_SHARD_KEY

    def __init__(
        self, wanted: Sequence[str], table: str | None = None, key: str | None = None,
        scope: str = "",
    ) -> None:
        self.wanted = tuple(wanted)
        self.table = table
        self.key = key
        super().__init__(
            "no shard key confines the statement to one shard: give a shard hint or an "
            "equality on " + "; ".join(self.wanted) + scope
        )

    def detail(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"wanted": list(self.wanted)}
        if self.key is not None:
            detail.update(key=self.key, table=self.table)
        return detail


class UnknownShardError(RoutingError):
    code = ErrorCode.UNKNOWN_SHARD

    def __init__(self, message: str, shard: object = None) -> None:
        super().__init__(message)
        self.shard = shard

    def detail(self) -> dict[str, Any]:
        # `shard` is what the request named, which need not be a str (an id, say)
        return {"shard": self.shard} if isinstance(self.shard, str) and self.shard else {}


class CrossShardError(RoutingError):
    code = ErrorCode.CROSS_SHARD_UNSUPPORTED


class Refusal(enum.Enum):
    """Why a cross-shard read was refused (a metrics label)."""

    SHAPE = "shape"  # a set operation, DISTINCT ON, grouping sets, TABLESAMPLE, WITH TIES ...
    NOT_COLOCATED = "not_colocated"  # tables or subqueries that meet rows of other shards
    WINDOW = "window"
    AGGREGATE = "aggregate"  # an aggregate that cannot be combined from per-shard parts
    DISTINCT = "distinct"
    EXPRESSION = "expression"  # an expression over aggregates, a HAVING the merge cannot judge
    VOLATILE = "volatile"
    ORDER = "order"  # ORDER BY USING, a collation, values that cannot be compared exactly
    LIMIT = "limit"
    TOO_LARGE = "too_large"


class ScatterRefused(CrossShardError):
    """A read that spans shards and cannot be merged exactly (CROSS_SHARD_UNSUPPORTED)."""

    def __init__(self, reason: Refusal, part: str, why: str) -> None:
        self.reason = reason
        self.part = part
        super().__init__(f"cross-shard read refused: {part}: {why}")


class IllegalTransition(CoreError):
    """A two-phase coordinator tried a step its state does not allow: a bug, never a client's
    doing."""

    code = ErrorCode.INTERNAL


class ConninfoError(CoreError):
    """A libpq connection string (a standby's primary_conninfo) that cannot be parsed, or
    written back, by router/core/conninfo.py: our peer's configuration, never a client's."""

    code = ErrorCode.INTERNAL


class DocumentValidationError(CoreError):
    """A document does not have its collection's shape. `field` is a dotted path."""

    code = ErrorCode.DOC_ERROR

    def __init__(self, collection: str, field: str, message: str) -> None:
        self.collection = collection
        self.field = field
        self.message = message
        super().__init__(f"{collection}: field {field!r}: {message}")
