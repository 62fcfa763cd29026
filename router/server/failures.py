"""Maps whatever went wrong while serving a request to a typed protocol Error reply.

One table, so every failure a client can see has a stable code, a clear message, the SQLSTATE
when PostgreSQL raised it, and whether retrying is safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from protocol.errors import ErrorCode, ProtocolError
from router.backend.docstore import (
    DocOperationError,
    DocTimeoutError,
    DocUnavailableError,
    DocUnknownOperationError,
    DuplicateDocumentError,
)
from router.backend.pool import NodeUnavailableError, PoolTimeoutError
from router.backend.wirevalues import ResultValueError
from router.core.classify import SqlParseError, UnsupportedStatementError
from router.core.routing import (
    CrossShardError,
    MissingShardKeyError,
    RoutingError,
    UnknownShardError,
)
from router.engine.errors import NodeReadOnlyError, RequestTimeout, ShuttingDown
from router.engine.idempotency import IdempotencyKeyReused
from router.engine.scatter import ShardFailure
from router.engine.session import TransactionError
from router.engine.twophase import OutcomeUnknown, TwoPhaseAborted
from router.engine.undelivered import ResultUndeliverable, rowcount_of

__all__ = ["Failure", "failure_for"]

_ARGUMENT = re.compile(r"query argument \$(\d+)")


@dataclass(slots=True)
class Failure:
    code: ErrorCode
    message: str
    sqlstate: str | None = None
    retryable: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


def _raised_by_driver(exc: asyncpg.PostgresError) -> bool:
    """asyncpg refused a parameter before sending it (a str for an int4): its DataError
    carries SQLSTATE 22000 but none of the fields a server error has."""
    return (isinstance(exc, asyncpg.DataError)
            and getattr(exc, "server_source_filename", None) is None
            and "query argument" in str(exc))  # fmt: skip


def failure_for(exc: BaseException, *, read_only: bool = False) -> Failure:
    """The Error reply for `exc`. `read_only` says the request was a read (safe to retry)."""
    if isinstance(exc, ShardFailure):  # one shard of a cross-shard read: named in the reply
        failure = failure_for(exc.cause, read_only=True)
        failure.message = f"shard {exc.shard}: {failure.message}"
        failure.detail = {**failure.detail, "shard": exc.shard}
        return failure
    if isinstance(exc, SqlParseError):
        where = {"position": None if exc.position is None else exc.position + 1}
        return Failure(ErrorCode.SQL_PARSE_ERROR, exc.message, sqlstate=exc.sqlstate, detail=where)
    if isinstance(exc, MissingShardKeyError):
        detail: dict[str, Any] = {"wanted": list(exc.wanted)}
        if exc.key is not None:
            detail.update(key=exc.key, table=exc.table)
        return Failure(ErrorCode.MISSING_SHARD_KEY, str(exc), detail=detail)
    if isinstance(exc, UnknownShardError):
        shard = exc.shard if isinstance(exc.shard, str) else None
        return Failure(ErrorCode.UNKNOWN_SHARD, str(exc), detail={"shard": shard} if shard else {})
    if isinstance(exc, CrossShardError):
        return Failure(ErrorCode.CROSS_SHARD_UNSUPPORTED, str(exc))
    if isinstance(exc, ResultUndeliverable):  # it applied: never to be read as a failure
        return Failure(ErrorCode.RESULT_UNDELIVERABLE, str(exc), detail=exc.detail())
    if isinstance(exc, IdempotencyKeyReused):
        return Failure(ErrorCode.IDEMPOTENCY_KEY_REUSED, str(exc),
                       detail={"idempotency_key": exc.key, "shard": exc.shard})  # fmt: skip
    if isinstance(exc, (RoutingError, UnsupportedStatementError)):
        return Failure(ErrorCode.INVALID_REQUEST, str(exc))
    if isinstance(exc, NodeUnavailableError):
        # Once the statement was sent, a write may have applied: then only reads are safe.
        return Failure(ErrorCode.NODE_UNAVAILABLE, str(exc), retryable=read_only or not exc.sent)
    if isinstance(exc, PoolTimeoutError):
        return Failure(ErrorCode.POOL_EXHAUSTED, str(exc), retryable=True)
    if isinstance(exc, RequestTimeout):
        return Failure(ErrorCode.TIMEOUT, str(exc), retryable=read_only)
    if isinstance(exc, ShuttingDown):
        return Failure(ErrorCode.SHUTTING_DOWN, str(exc), retryable=True)
    if isinstance(exc, TransactionError):
        return Failure(ErrorCode[exc.code_name], str(exc))
    if isinstance(exc, TwoPhaseAborted):  # rolled back everywhere: PostgreSQL's reason, if any
        cause = failure_for(exc.cause) if isinstance(exc.cause, asyncpg.PostgresError) else None
        if cause is not None and cause.code is ErrorCode.POSTGRES_ERROR:
            return Failure(cause.code, str(exc), sqlstate=cause.sqlstate,
                           detail={**cause.detail, "shard": exc.shard})  # fmt: skip
        return Failure(ErrorCode.TRANSACTION_ABORTED, str(exc), detail={"shard": exc.shard})
    if isinstance(exc, OutcomeUnknown):
        return Failure(ErrorCode.TRANSACTION_OUTCOME_UNKNOWN, str(exc),
                       detail={"gtid": exc.gtid, "coordinator": exc.coordinator,
                               "shards": list(exc.shards)})  # fmt: skip
    if isinstance(exc, NodeReadOnlyError):
        return Failure(ErrorCode.READ_ONLY, str(exc), sqlstate="25006", retryable=exc.retryable)
    if isinstance(exc, ResultValueError) and exc.status is not None and not read_only:
        # A write the server completed (and so committed): it applied, whatever its reply.
        applied = ResultUndeliverable(exc.status, rowcount_of(exc.status, []), None, None,
                                      None, str(exc))  # fmt: skip
        return Failure(ErrorCode.RESULT_UNDELIVERABLE, str(applied), detail=applied.detail())
    if isinstance(exc, ResultValueError):  # the statement ran; its reply cannot be sent
        failed = {"raised_by": "router", "column": exc.column, "type": exc.type_name}
        return Failure(ErrorCode.POSTGRES_ERROR, str(exc), sqlstate=exc.sqlstate, detail=failed)
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None)
        if _raised_by_driver(exc):  # nothing was sent
            found = _ARGUMENT.search(str(exc))
            argument: dict[str, Any] = {"raised_by": "router",
                                        "parameter": int(found[1]) if found else None}
            return Failure(ErrorCode.POSTGRES_ERROR, str(exc), sqlstate=sqlstate, detail=argument)
        if sqlstate == "57014":  # query_canceled (statement_timeout)
            return Failure(ErrorCode.TIMEOUT, str(exc), sqlstate=sqlstate, retryable=read_only)
        info: dict[str, Any] = {}
        for attr in ("detail", "hint", "constraint_name", "table_name", "column_name"):
            value = getattr(exc, attr, None)
            if value:
                info[attr] = value
        return Failure(ErrorCode.POSTGRES_ERROR, str(exc), sqlstate=sqlstate, detail=info)
    if isinstance(exc, asyncpg.InterfaceError):
        # asyncpg refuses parameters before anything is sent (too many, too few).
        return Failure(ErrorCode.INVALID_REQUEST, f"invalid parameters: {exc}")
    if isinstance(exc, (TypeError, ValueError)):  # a request's arguments (Doc, Admin, ...)
        return Failure(ErrorCode.INVALID_REQUEST, f"invalid request: {exc}")
    if isinstance(exc, DuplicateDocumentError):
        return Failure(ErrorCode.DOC_DUPLICATE_KEY, str(exc))
    if isinstance(exc, DocUnavailableError):  # never reached: nothing was sent
        return Failure(ErrorCode.DOC_UNAVAILABLE, str(exc), retryable=True)
    if isinstance(exc, DocTimeoutError):  # a read may run again; a write may have applied
        return Failure(ErrorCode.TIMEOUT, str(exc), retryable=read_only)
    if isinstance(exc, DocUnknownOperationError):
        return Failure(ErrorCode.DOC_UNKNOWN_OPERATION, str(exc))
    if isinstance(exc, DocOperationError):
        return Failure(ErrorCode.DOC_ERROR, str(exc))
    if isinstance(exc, ProtocolError):
        return Failure(exc.code, exc.message)
    return Failure(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
