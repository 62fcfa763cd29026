"""What the connections to PostgreSQL and the document store raise: a node that cannot be
reached or used, a pool with no connection free, a result value the wire cannot carry, and the
document store's refusals. `Unsupported` only tells the engine to take the pooled path."""

from __future__ import annotations

from typing import Any

from protocol.errors import ErrorCode
from router.errors import GeorouteError, Retry

__all__ = [
    "AuthError",
    "BackendError",
    "DocOperationError",
    "DocTimeoutError",
    "DocUnavailableError",
    "DocUnknownOperationError",
    "DuplicateDocumentError",
    "NodeUnavailableError",
    "PipelineError",
    "PoolTimeoutError",
    "ResultValueError",
    "TLSRefused",
    "Unsupported",
]


class BackendError(GeorouteError):
    """Base of what the backend raises (no code of its own: each subclass has one)."""


# ---- PostgreSQL ----------------------------------------------------------------------------


class NodeUnavailableError(BackendError):
    """The node cannot be reached. `sent` is True when the connection died after the statement
    was sent, so it may have run: then only a read is safe to retry. `refused` is True when
    the server answered and turned a new connection away (too many connections, say): it is
    up, so its health does not change."""

    code = ErrorCode.NODE_UNAVAILABLE
    retry = Retry.ALWAYS

    def __init__(self, message: str, *, sent: bool = False, refused: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.refused = refused
        if sent:
            self.retry = Retry.IF_READ


class PoolTimeoutError(BackendError):
    """No backend connection became free in time. Safe to retry."""

    code = ErrorCode.POOL_EXHAUSTED
    retry = Retry.ALWAYS


class PipelineError(BackendError, ConnectionError):
    """The pipelined connection failed or closed; requests in flight on it may have run.
    (The engine reports it as the node unavailable, naming the node.)"""

    code = ErrorCode.NODE_UNAVAILABLE
    retry = Retry.IF_READ


class TLSRefused(BackendError, ConnectionError):
    """The server would not start TLS, and sslmode demands it (or the exchange was unsafe).
    Nothing was sent."""

    code = ErrorCode.NODE_UNAVAILABLE
    retry = Retry.ALWAYS


class AuthError(BackendError):
    """The server's side of the authentication exchange does not check out. Nothing was
    sent."""

    code = ErrorCode.NODE_UNAVAILABLE
    retry = Retry.ALWAYS


class Unsupported(BackendError):
    """This statement or these parameters are not carried by the pipeline (nothing was sent):
    the engine runs it on a pooled connection instead, so one that reaches a client is our
    bug."""

    code = ErrorCode.INTERNAL


class ResultValueError(BackendError):
    """A result value the wire cannot give the client (PROTOCOL.md section 4): the statement
    ran, and its reply cannot be sent. `column` is filled in by whoever knows the columns."""

    code = ErrorCode.POSTGRES_ERROR

    def __init__(self, type_name: str, why: str, sqlstate: str = "22008") -> None:
        super().__init__(why)
        self.type_name = type_name
        self.why = why
        self.sqlstate = sqlstate
        self.column: str | None = None
        # The command tag, when the server completed the statement without an error (so a
        # write applied): set by the pipeline, which reads every reply to its end.
        self.status: str | None = None

    def __str__(self) -> str:
        where = f"column {self.column!r} " if self.column is not None else "a column "
        return (f"cannot return {where}of type {self.type_name}: {self.why} (the statement "
                "ran; cast the column, e.g. to text, to read it)")

    def detail(self) -> dict[str, Any]:
        return {"raised_by": "router", "column": self.column, "type": self.type_name}


# ---- the document store --------------------------------------------------------------------


class DocOperationError(BackendError):
    """A bad document-store request (unknown op, bad arguments, invalid document)."""

    code = ErrorCode.DOC_ERROR


class DocUnknownOperationError(DocOperationError):
    """An op the document store does not have (error 6003)."""

    code = ErrorCode.DOC_UNKNOWN_OPERATION


class DocUnavailableError(BackendError):
    """The document store cannot be reached (nothing was sent). Safe to retry."""

    code = ErrorCode.DOC_UNAVAILABLE
    retry = Retry.ALWAYS


class DuplicateDocumentError(BackendError):
    code = ErrorCode.DOC_DUPLICATE_KEY


class DocTimeoutError(BackendError):
    """The document store took longer than OPERATION_TIMEOUT_MS, or the connection was lost
    under the operation: a write may have applied."""

    code = ErrorCode.TIMEOUT
    retry = Retry.IF_READ
