"""Errors the engine raises for the edge to answer: a deadline passed, the node is shutting
down, a node taken for the primary refused a write as read-only."""

from __future__ import annotations

import asyncpg

__all__ = ["NodeReadOnlyError", "RequestTimeout", "ShuttingDown", "is_read_only_refusal"]


class RequestTimeout(Exception):
    pass


class ShuttingDown(Exception):
    pass


class NodeReadOnlyError(Exception):
    """A write that the router sent to a node it took for the primary was refused as
    read-only (SQLSTATE 25006): the node has been demoted, e.g. during a failover. Nothing
    was applied; outside a transaction the same request may go again (`retryable`), and
    finds the new primary. A 25006 anywhere else is the statement's own doing (a
    read-only transaction the client asked for) and stays a plain PostgreSQL error."""

    def __init__(self, cause: BaseException, *, retryable: bool) -> None:
        super().__init__(str(cause))
        self.retryable = retryable


def is_read_only_refusal(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == "25006"
