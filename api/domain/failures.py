"""One table from the client library's errors to the API's: PostgreSQL's SQLSTATE (the schema's
functions raise documented codes, sql/002_functions.sql) or the router's error family. The
message a user sees is ours or the schema function's own RAISE text, never SQL."""

from __future__ import annotations

import logging
from types import TracebackType

import client
from api.errors import (
    ApiError,
    Conflict,
    Forbidden,
    IdempotencyKeyReused,
    InvalidInput,
    NotFound,
    Unavailable,
)

__all__ = ["SQLSTATES", "mapped", "translate"]

log = logging.getLogger("api.domain")

# SQLSTATE -> (error class, whether the function's RAISE message is shown). The schema's own
# messages name ids and states, written for callers; constraint messages name constraints.
SQLSTATES: dict[str, tuple[type[ApiError], bool]] = {
    "P0002": (NotFound, True),         # no such row (schema functions)
    "23505": (Conflict, False),        # unique violation: duplicate email, enrollment ...
    "23503": (NotFound, False),        # a referenced row does not exist
    "23514": (InvalidInput, False),    # a CHECK constraint
    "22023": (InvalidInput, True),     # invalid argument (schema functions)
    "22P02": (InvalidInput, False),    # invalid text representation
    "22003": (InvalidInput, False),    # numeric value out of range
    "22021": (InvalidInput, False),    # a character text cannot hold (NUL)
    "GR001": (Conflict, True),         # course full
    "GR002": (Conflict, True),         # course not open for enrollment
    "GR003": (InvalidInput, True),     # wrong region
    "GR004": (IdempotencyKeyReused, False),
    "GR005": (InvalidInput, True),     # coupon not applicable
    "GR006": (InvalidInput, True),     # lesson not part of the course
    "GR007": (Conflict, True),         # course not completed
    "GR008": (Conflict, True),         # refund refused
    "GR009": (Forbidden, True),        # user deactivated
    "GR010": (Forbidden, True),        # not an instructor
    "GR011": (Conflict, True),         # invalid state change
    "GR012": (Conflict, True),         # enrollment not active
    "GR013": (Conflict, True),         # already paid
    "GR014": (Conflict, True),         # a remote enrollment's seat is held elsewhere
    "GR015": (Conflict, True),         # the user already lives in that region
    "GR016": (Conflict, True),         # the user teaches courses (they do not move)
    "GR017": (Conflict, True),         # a paid enrollment is refunded, not cancelled
}

_UNIQUE_DETAIL = "a resource with these values already exists"

# PostgreSQL failures a retry may cure, answered 503 with Retry-After: the transaction was
# rolled back (serialization failure, deadlock, a lock not granted, a statement cancelled
# by its timeout), or the server is out of connections or resources, or shutting down or
# starting (classes 08 and 53, and 57P01-57P03).
_RETRY_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57014", "57P01", "57P02", "57P03"})
_RETRY_CLASSES = ("08", "53")


def translate(exc: client.GeorouteError) -> ApiError:
    """The API error for a client error. Retryable failures (a node or the router down, a
    timeout, a full pool, a deadlock or a serialization failure) are 503 with Retry-After;
    the rest we did not foresee are 500. (An id of no shard here is "no such row" only
    where the domain routes by the caller's id: api/domain/data.py's *_by_id.)"""
    if isinstance(exc, client.IdempotencyKeyReusedError):
        return IdempotencyKeyReused("this Idempotency-Key was used with a different request")
    if isinstance(exc, client.PostgresError) and exc.sqlstate in SQLSTATES:
        cls, show = SQLSTATES[exc.sqlstate]
        message = _schema_message(exc.message) if show else None
        if exc.sqlstate == "23505":
            message = _UNIQUE_DETAIL
        return cls(message)
    if isinstance(exc, client.PostgresError) and exc.sqlstate and (
            exc.sqlstate in _RETRY_SQLSTATES or exc.sqlstate.startswith(_RETRY_CLASSES)):
        return Unavailable("the database could not finish this request now; retry shortly",
                           retry_after=1)
    if isinstance(exc, client.CrossShardError):
        return InvalidInput("this request spans regions in a way that is not supported")
    if isinstance(exc, client.TransactionOutcomeUnknownError):
        # Committed in every region or in none: the router settles it once the region that
        # holds the decision answers. Reading the resource again tells which.
        return Unavailable("the outcome is not known yet; read the resource again shortly",
                           retry_after=1)
    if exc.retryable or isinstance(exc, client.ConnectionLostError | client.RequestTimeoutError
                                   | client.ShuttingDownError):
        return Unavailable("the data layer is unavailable; retry shortly", retry_after=1)
    log.error("unmapped data-layer error: %s", exc)
    return ApiError("the request could not be completed")


def _schema_message(message: str) -> str:
    # A PL/pgSQL RAISE arrives as its text alone; keep only the first line and cap its size.
    return message.splitlines()[0][:300] if message else "refused"


class mapped:  # lower case: it reads as the function it was (`with mapped(): ...`)
    """`with mapped(): await db.fetch(...)`: client errors leave as API errors. (A class, not
    a generator context manager: every statement the API sends enters one, and contextlib's
    costs several times as much.)"""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if isinstance(exc, client.GeorouteError):
            raise translate(exc) from exc
