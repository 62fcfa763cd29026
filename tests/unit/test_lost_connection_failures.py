"""A connection lost under a statement is never reported as the statement's own error."""

from __future__ import annotations

import asyncpg

from protocol.errors import ErrorCode
from router.server.failures import failure_for


def test_a_lost_connection_that_reaches_the_table_is_the_node_unavailable() -> None:
    # asyncpg's ConnectionDoesNotExistError is a PostgresError (SQLSTATE 08003): it read
    # as POSTGRES_ERROR, a refusal, although the write may have applied.
    lost = asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation")
    write = failure_for(lost, read_only=False)
    assert (write.code, write.retryable) == (ErrorCode.NODE_UNAVAILABLE, False)
    read = failure_for(lost, read_only=True)
    assert (read.code, read.retryable) == (ErrorCode.NODE_UNAVAILABLE, True)


def test_a_server_error_is_still_the_statement_s_own() -> None:
    refused = asyncpg.exceptions.UniqueViolationError("duplicate key")
    assert failure_for(refused).code == ErrorCode.POSTGRES_ERROR
