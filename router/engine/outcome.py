"""What running a statement produces, shared by the executor and the transactions: the
outcome a reply is made from, where a fast-path statement went, and which errors mean the
backend connection is lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from router.backend.pool import Backend, NodeUnavailableError
from router.core.classify import Analysis
from router.core.health import HealthEvent
from router.engine.errors import COMMIT_ANSWER_SECONDS
from router.ha.topology import NodeState, ShardState
from router.types import Role

__all__ = [
    "CONNECTION_ERRORS", "Outcome", "Routed", "bounded_transaction", "connection_lost",
    "returned_after",
]

# Errors after which the backend connection cannot be trusted (the node may be gone). asyncpg
# raises InternalClientError ("cannot switch to state ...") on a connection the server ended
# under it (seen after pg_terminate_backend); such a connection must never be reused.
CONNECTION_ERRORS = (
    OSError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.CrashShutdownError,
)



@contextlib.asynccontextmanager
async def bounded_transaction(backend: Backend,
                              seconds: float = COMMIT_ANSWER_SECONDS) -> AsyncIterator[None]:
    """asyncpg's transaction block on `backend`, whose COMMIT (or ROLLBACK) is awaited
    `seconds` at most: over a link that stalls (a hung primary whose kernel still
    acknowledges every byte, so no TCP timeout ends it) it raises TimeoutError, an OSError
    and so a lost connection (`connection_lost`), instead of holding the request for as
    long as the stall lasts (found by an audit). What the statements inside wait for is
    bounded by the caller, as before."""
    block = backend.conn.transaction()
    await block.start()
    try:
        yield
    except BaseException:
        async with asyncio.timeout(seconds):
            await block.rollback()
        raise
    async with asyncio.timeout(seconds):
        await block.commit()


def connection_lost(exc: BaseException, backend: Backend) -> bool:
    """Whether `exc` means `backend`'s connection is gone. Beyond CONNECTION_ERRORS: asyncpg
    raises InterfaceError ("the underlying connection is closed") when a transaction block
    ends on a connection lost inside it, hiding the loss itself."""
    return isinstance(exc, CONNECTION_ERRORS) or (
        isinstance(exc, asyncpg.exceptions.InterfaceError) and backend.conn.is_closed())



# A cross-shard read queued with no task (ScatterRunner.submit) is finished by one call:
# (its merged outcome, None, False), or (None, the error, False), or (None, a part's error,
# True): parts the pipeline could not finish, so the whole read runs again the ordinary way.
ScatterDone = Callable[["Outcome | None", "BaseException | None", bool], None]


@dataclass(slots=True, eq=False)
class Routed:
    """Where `Executor.submit` queued a statement (on `node`'s pipeline)."""

    columns: list[str]
    node: NodeState
    shard: ShardState
    analysis: Analysis


@dataclass(slots=True)
class Outcome:
    columns: list[str]
    rows: list[Any]
    status: str
    shard: str
    node: str
    role: Role
    ryw_token: str | None = None
    # Set when the statement applied but its rows can never be sent (a keyed write whose
    # reply could not be stored): why. Its reply then says that it applied (server.py).
    rows_lost: str | None = None
    # Every shard's token when the request wrote on several (a two-phase commit); the first
    # is also `ryw_token`, for clients that read only that (PROTOCOL.md section 5).
    ryw_tokens: tuple[str, ...] = ()

    @property
    def rowcount(self) -> int:
        last = self.status.rsplit(" ", 1)[-1]
        return int(last) if last.isdigit() else len(self.rows)


@contextlib.contextmanager
def returned_after(node: NodeState, backend: Backend) -> Iterator[None]:
    """Give `backend` back to `node`'s pool when the block ends: kept after a statement's own
    error or one asyncpg raised before sending; dropped when the connection cannot be trusted
    (lost: the node's other idle connections most likely are too, so it is marked DOWN and
    the monitor's next good probe brings it back; or cancelled mid-statement)."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        node.pool.release(backend, broken=True)
        node.record(HealthEvent.CONNECT_FAILED, str(exc))
        raise NodeUnavailableError(f"{node.name}: connection lost: {exc}", sent=True) from exc
    except (asyncpg.PostgresError, asyncpg.exceptions.InterfaceError):
        node.pool.release(backend)  # the statement failed (or never left); the connection is fine
        raise
    except BaseException:
        # e.g. cancelled mid-statement: stopped on the server, then closed (pool.release)
        node.pool.release(backend, abandoned=True)
        raise
    node.pool.release(backend)
