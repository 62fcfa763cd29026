"""The client's exceptions: one class per family of protocol error codes (protocol/errors.py),
plus the client's own connection faults. Every one carries code, sqlstate and retryable."""

from __future__ import annotations

import builtins
from typing import Any

from protocol import Error, ErrorCode, is_retryable

__all__ = [
    "AuthError",
    "BackendError",
    "ConnectionLostError",
    "CrossShardError",
    "DocumentStoreError",
    "DuplicateKeyError",
    "GeorouteError",
    "IdempotencyKeyReusedError",
    "InternalError",
    "InvalidRequestError",
    "MissingShardKeyError",
    "NoRouterAvailableError",
    "NodeUnavailableError",
    "PoolExhaustedError",
    "PostgresError",
    "ProtocolViolationError",
    "ReadOnlyError",
    "RequestTimeoutError",
    "ResultUndeliverableError",
    "RoutingError",
    "SQLSyntaxError",
    "ShuttingDownError",
    "TooManyConnectionsError",
    "TransactionAbortedError",
    "TransactionError",
    "UnknownShardError",
    "UnknownTransactionError",
    "UnsupportedVersionError",
    "error_from_reply",
]


class GeorouteError(Exception):
    """Base of every error the client raises."""

    default_code: int = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        name: str | None = None,
        sqlstate: str | None = None,
        retryable: bool | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(self.default_code if code is None else code)
        self.name = name if name is not None else _code_name(self.code)
        self.sqlstate = sqlstate
        self.retryable = is_retryable(self.code) if retryable is None else retryable
        self.detail: dict[str, Any] = detail or {}

    def __str__(self) -> str:
        state = f" [{self.sqlstate}]" if self.sqlstate else ""
        return f"{self.name} ({self.code}){state}: {self.message}"


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return "UNKNOWN"


# 1xxx and client-side connection faults
class ProtocolViolationError(GeorouteError):
    default_code = ErrorCode.MALFORMED_FRAME


class UnsupportedVersionError(ProtocolViolationError):
    default_code = ErrorCode.UNSUPPORTED_VERSION


class ConnectionLostError(GeorouteError):
    """The connection dropped with the request in flight (it may or may not have applied)."""

    default_code = ErrorCode.CONNECTION_LOST


class NoRouterAvailableError(ConnectionLostError):
    """No router address accepted a connection (the request was never sent)."""


# 2xxx
class AuthError(GeorouteError):
    default_code = ErrorCode.AUTH_FAILED


# 3xxx
class RoutingError(GeorouteError):
    default_code = ErrorCode.INVALID_REQUEST


class MissingShardKeyError(RoutingError):
    default_code = ErrorCode.MISSING_SHARD_KEY

    @property
    def key(self) -> str | None:
        """The shard-key column the statement must constrain."""
        key = self.detail.get("key")
        return key if isinstance(key, str) else None


class UnknownShardError(RoutingError):
    default_code = ErrorCode.UNKNOWN_SHARD


class SQLSyntaxError(RoutingError):
    default_code = ErrorCode.SQL_PARSE_ERROR

    @property
    def position(self) -> int | None:
        pos = self.detail.get("position")
        return pos if isinstance(pos, int) else None


class CrossShardError(RoutingError):
    default_code = ErrorCode.CROSS_SHARD_UNSUPPORTED


class InvalidRequestError(RoutingError):
    default_code = ErrorCode.INVALID_REQUEST


class IdempotencyKeyReusedError(InvalidRequestError):
    """The idempotency key already names another request (another statement, other
    parameters, another batch) on that shard: nothing was run. A new request needs a new key."""

    default_code = ErrorCode.IDEMPOTENCY_KEY_REUSED

    @property
    def idempotency_key(self) -> str | None:
        key = self.detail.get("idempotency_key")
        return key if isinstance(key, str) else None


# 4xxx
class BackendError(GeorouteError):
    default_code = ErrorCode.NODE_UNAVAILABLE


class NodeUnavailableError(BackendError):
    default_code = ErrorCode.NODE_UNAVAILABLE


class PostgresError(BackendError):
    """PostgreSQL rejected the statement; `sqlstate` says why (e.g. 23505 unique violation)."""

    default_code = ErrorCode.POSTGRES_ERROR


class RequestTimeoutError(BackendError, builtins.TimeoutError):
    """The request ran past its timeout (client- or router-side). A write may have applied."""

    default_code = ErrorCode.TIMEOUT


class ResultUndeliverableError(BackendError):
    """The write applied (committed, or inside transaction `tx` ran in it), but the router
    could not send its result (a value with no wire form, a reply over its frame limit).
    Never retried: sending it again would apply it twice. `status`, `rowcount` and
    `ryw_token` say what it did; the client has noted the token for its later reads."""

    default_code = ErrorCode.RESULT_UNDELIVERABLE

    @property
    def applied(self) -> bool:
        return self.detail.get("outcome") == "applied"

    @property
    def status(self) -> str | None:
        status = self.detail.get("status")
        return status if isinstance(status, str) else None

    @property
    def rowcount(self) -> int | None:
        count = self.detail.get("rowcount")
        return count if isinstance(count, int) else None

    @property
    def ryw_token(self) -> str | None:
        token = self.detail.get("ryw_token")
        return token if isinstance(token, str) else None

    @property
    def tx(self) -> int | None:
        tx = self.detail.get("tx")
        return tx if isinstance(tx, int) else None


class PoolExhaustedError(BackendError):
    default_code = ErrorCode.POOL_EXHAUSTED


class ReadOnlyError(BackendError):
    default_code = ErrorCode.READ_ONLY


# 5xxx
class TransactionError(GeorouteError):
    default_code = ErrorCode.UNKNOWN_TRANSACTION


class UnknownTransactionError(TransactionError):
    default_code = ErrorCode.UNKNOWN_TRANSACTION


class TransactionAbortedError(TransactionError):
    default_code = ErrorCode.TRANSACTION_ABORTED


class TransactionOutcomeUnknownError(TransactionError):
    """A commit over several shards lost the shard that holds its decision mid-way: it
    committed everywhere or nowhere, and the router settles every shard alike once it can.
    `detail`: {"gtid", "coordinator", "shards"}."""

    default_code = ErrorCode.TRANSACTION_OUTCOME_UNKNOWN


# 6xxx
class DocumentStoreError(GeorouteError):
    default_code = ErrorCode.DOC_ERROR


class DuplicateKeyError(DocumentStoreError):
    default_code = ErrorCode.DOC_DUPLICATE_KEY


# 9xxx
class InternalError(GeorouteError):
    """9001: a fault in the router, not in the request; a write may or may not have applied.
    Its subclasses are a router node turning requests away (nothing was run)."""

    default_code = ErrorCode.INTERNAL

    @property
    def reference(self) -> str | None:
        """For 9001 INTERNAL: the id under which the router logged the fault with its
        traceback (PROTOCOL.md section 3); give it to whoever runs the router."""
        reference = self.detail.get("reference")
        return reference if isinstance(reference, str) else None


class ShuttingDownError(InternalError):
    default_code = ErrorCode.SHUTTING_DOWN


class TooManyConnectionsError(InternalError):
    default_code = ErrorCode.TOO_MANY_CONNECTIONS


_BY_CODE: dict[int, type[GeorouteError]] = {
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersionError,
    ErrorCode.MISSING_SHARD_KEY: MissingShardKeyError,
    ErrorCode.UNKNOWN_SHARD: UnknownShardError,
    ErrorCode.SQL_PARSE_ERROR: SQLSyntaxError,
    ErrorCode.CROSS_SHARD_UNSUPPORTED: CrossShardError,
    ErrorCode.INVALID_REQUEST: InvalidRequestError,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: IdempotencyKeyReusedError,
    ErrorCode.NODE_UNAVAILABLE: NodeUnavailableError,
    ErrorCode.POSTGRES_ERROR: PostgresError,
    ErrorCode.TIMEOUT: RequestTimeoutError,
    ErrorCode.POOL_EXHAUSTED: PoolExhaustedError,
    ErrorCode.READ_ONLY: ReadOnlyError,
    ErrorCode.RESULT_UNDELIVERABLE: ResultUndeliverableError,
    ErrorCode.UNKNOWN_TRANSACTION: UnknownTransactionError,
    ErrorCode.TRANSACTION_ABORTED: TransactionAbortedError,
    ErrorCode.TRANSACTION_OUTCOME_UNKNOWN: TransactionOutcomeUnknownError,
    ErrorCode.DOC_DUPLICATE_KEY: DuplicateKeyError,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.SHUTTING_DOWN: ShuttingDownError,
    ErrorCode.TOO_MANY_CONNECTIONS: TooManyConnectionsError,
}

_BY_FAMILY: dict[int, type[GeorouteError]] = {
    1: ProtocolViolationError,
    2: AuthError,
    3: RoutingError,
    4: BackendError,
    5: TransactionError,
    6: DocumentStoreError,
    9: InternalError,
}


def error_from_reply(reply: Error) -> GeorouteError:
    """The exception for an Error reply: by exact code, else by family, else InternalError."""
    cls = _BY_CODE.get(reply.code) or _BY_FAMILY.get(reply.code // 1000, InternalError)
    return cls(
        reply.message,
        code=reply.code,
        name=reply.name,
        sqlstate=reply.sqlstate,
        retryable=reply.retryable,
        detail=reply.detail,
    )
