"""Turns whatever went wrong while serving a request into the Error reply a client sees.

The router's own errors carry their code and retryability (router/errors.py and each package's
errors.py); the table below adds the driver's exceptions, which carry neither. Two cases depend
on the request: a cross-shard read names the shard that failed, and a result value lost after
a write the server completed is a write that applied. Anything else is our bug: INTERNAL, never
the client's bad input, logged with its traceback under a reference that the reply carries.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from protocol.errors import ErrorCode, ProtocolError
from router.backend.errors import ResultValueError
from router.engine.errors import ResultUndeliverable, ShardFailure, TwoPhaseAborted
from router.engine.undelivered import rowcount_of
from router.errors import GeorouteError

__all__ = ["Failure", "failure_for", "internal_failure"]

log = logging.getLogger("georoute.server")

_ARGUMENT = re.compile(r"query argument \$(\d+)")
# asyncpg's InterfaceErrors about the request's parameters (asyncpg/protocol/prepared_stmt.pyx)
_PARAMETERS = re.compile(r"the server expects \d+ arguments? for this query|"
                         r"the number of query arguments cannot exceed")


@dataclass(slots=True)
class Failure:
    code: ErrorCode
    message: str
    sqlstate: str | None = None
    retryable: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


def failure_for(exc: BaseException, *, read_only: bool = False,
                request_id: str | None = None) -> Failure:
    """The Error reply for `exc`. `read_only` says the request was a read (safe to retry);
    `request_id`, the caller's id for it, goes into the log line of an internal error."""
    if isinstance(exc, ShardFailure):  # one shard of a cross-shard read: named in the reply
        failure = failure_for(exc.cause, read_only=True, request_id=request_id)
        failure.message = f"shard {exc.shard}: {failure.message}"
        failure.detail = {**failure.detail, "shard": exc.shard}
        return failure
    if isinstance(exc, TwoPhaseAborted) and isinstance(exc.cause, asyncpg.PostgresError):
        # Rolled back everywhere for PostgreSQL's reason: answered as that error, on its shard.
        cause = failure_for(exc.cause)
        if cause.code is ErrorCode.POSTGRES_ERROR:
            return Failure(cause.code, str(exc), cause.sqlstate, False,
                           {**cause.detail, "shard": exc.shard})
    if isinstance(exc, ResultValueError) and exc.status is not None and not read_only:
        # A write the server completed (and so committed): it applied, whatever its reply.
        exc = ResultUndeliverable(exc.status, rowcount_of(exc.status, []), None, None, None,
                                  str(exc))
    if isinstance(exc, GeorouteError):
        if exc.code is ErrorCode.INTERNAL:
            return internal_failure(exc, request_id)
        return Failure(exc.code, str(exc), exc.sqlstate, exc.retry.allows(read_only),
                       exc.detail())
    if isinstance(exc, ProtocolError):
        return Failure(exc.code, exc.message)
    for kind, convert in _DRIVER:
        if isinstance(exc, kind):
            converted = convert(exc, read_only)
            if converted is not None:
                return converted
            break  # ours after all
    return internal_failure(exc, request_id)


def internal_failure(exc: BaseException, request_id: str | None = None) -> Failure:
    """Our bug: logged with its traceback under a new reference, which the reply carries so
    that an operator can find it (and under the caller's request id, when it gave one)."""
    reference = secrets.token_hex(6)
    log.error("internal error %s: %s: %s", reference, type(exc).__name__, exc, exc_info=exc,
              extra={"request_id": request_id})
    return Failure(ErrorCode.INTERNAL,
                   f"internal error (reference {reference}): a fault in the router, not in "
                   "the request; its log has the details under that reference",
                   detail={"reference": reference})


# ---- the driver's exceptions ---------------------------------------------------------------


def _raised_by_driver(exc: asyncpg.PostgresError) -> bool:
    """asyncpg refused a parameter before sending it (a str for an int4): its DataError
    carries SQLSTATE 22000 but none of the fields a server error has."""
    return (isinstance(exc, asyncpg.DataError)
            and getattr(exc, "server_source_filename", None) is None
            and "query argument" in str(exc))


def _postgres(exc: BaseException, read_only: bool) -> Failure:
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError) and _raised_by_driver(exc):  # nothing was sent
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


def _interface(exc: BaseException, read_only: bool) -> Failure | None:
    if _PARAMETERS.match(str(exc)):  # refused before anything was sent (too many, too few)
        return Failure(ErrorCode.INVALID_REQUEST, f"invalid parameters: {exc}")
    # The rest are about our use of the connection ("another operation is in progress"):
    # None, an internal error.
    return None


def _lost(exc: BaseException, read_only: bool) -> Failure:
    """A connection lost mid-operation that no caller named as such (SQLSTATE class 08 is
    asyncpg's, not the server's): the node's fault, and a write may have applied."""
    return Failure(ErrorCode.NODE_UNAVAILABLE, f"connection lost: {exc}", retryable=read_only)


# Each converter gives the reply, or None for an internal error (ours, not the driver's).
_DRIVER: tuple[tuple[type[BaseException], Callable[[BaseException, bool], Failure | None]],
               ...] = (
    (asyncpg.PostgresConnectionError, _lost),  # before PostgresError, its base
    (asyncpg.PostgresError, _postgres),
    (asyncpg.InterfaceError, _interface),
)
