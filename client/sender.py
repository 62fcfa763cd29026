"""The request loop that Client, Transaction and Collection share: hints for a request (its
timeout included), the session's read-your-writes map sent with every request and merged from
every reply's token, the deadline that bounds a request and its retries together, and the
retry of retryable failures with backoff."""

# A per-request `timeout=` (not an asyncio.timeout around the call) because it is also sent to
# the router as timeout_ms and bounds all retries together.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from client.connection import Connection
from client.errors import (
    ConnectionLostError,
    GeorouteError,
    NoRouterAvailableError,
    RequestTimeoutError,
    ResultUndeliverableError,
    error_from_reply,
)
from client.pool import RouterPool
from client.requestid import current_request_id
from protocol import (
    Admin,
    Commit,
    Consistency,
    Error,
    Hints,
    Reply,
    Request,
    Rollback,
    merge_ryw_token,
)

__all__ = ["Sender"]

# The requests with no hints that carry a request id as a trailing field (PROTOCOL.md 2.1).
_TRAILING_REQUEST_ID = (Commit, Rollback, Admin)


class Sender:
    """Sends requests over a RouterPool (or one pinned connection) with the session's state.

    The settings are plain attributes that Client exposes as its own."""

    def __init__(
        self,
        pool: RouterPool,
        *,
        command_timeout: float | None = None,
        max_retries: int = 3,
        retry_backoff: float = 0.02,
        retry_backoff_max: float = 1.0,
        session_consistency: bool = True,
    ) -> None:
        self.pool = pool
        self.command_timeout = command_timeout
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.session_consistency = session_consistency
        # The session's read-your-writes map {shard: highest LSN written}.
        self.ryw: dict[str, int] = {}
        # A copy of ryw that requests share (never mutated) until the next token changes it.
        self._ryw_wire: dict[str, int] | None = None
        self.closed = False

    def hints(
        self,
        shard: str | None,
        shard_key: Any,
        consistency: Consistency | str | None,
        idempotency_key: str | None,
        timeout: float | None,
        shards: Sequence[str] | None = None,
    ) -> Hints:
        """A request's hints; its timeout is `timeout`, else the command timeout."""
        hints = Hints(shard=shard, shard_key=shard_key, idempotency_key=idempotency_key,
                      shards=None if shards is None else list(shards))
        if consistency is not None:
            hints.consistency = Consistency(consistency)
        effective = self.command_timeout if timeout is None else timeout
        if effective is not None:
            hints.timeout_ms = max(1, int(effective * 1000))
        return hints

    def observe(self, positions: Iterable[tuple[str, int]]) -> None:
        """Take (shard, lsn) positions as this session's own writes."""
        for shard, lsn in positions:
            if lsn > self.ryw.get(shard, -1):
                self.ryw[shard] = lsn
                self._ryw_wire = None

    def _observe_token(self, token: str) -> None:
        merge_ryw_token(self.ryw, token)
        self._ryw_wire = None

    async def call(self, message: Request, retry: bool, timeout: float | None) -> Reply:
        reply, _ = await self.send(message, retry=retry, timeout=timeout)
        return reply

    async def send(
        self,
        message: Request,
        *,
        retry: bool,
        timeout: float | None,
        conn: Connection | None = None,
    ) -> tuple[Reply, Connection]:
        """Send on `conn` (pinned, never retried) or on a pooled connection, retrying
        retryable failures when `retry` allows it. Error replies are raised."""
        if self.closed:
            raise ConnectionLostError("client is closed")
        if timeout is None:
            timeout = self.command_timeout
        # Without a timeout (the common case) nothing here reads the clock or the loop.
        loop: asyncio.AbstractEventLoop | None = None
        deadline = 0.0
        if timeout is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
        hints: Hints | None = getattr(message, "hints", None)
        request_id = current_request_id()
        if request_id is not None:  # the caller's id for it (client/requestid.py)
            if hints is not None:
                hints.request_id = request_id
            elif type(message) in _TRAILING_REQUEST_ID:
                message.request_id = request_id  # type: ignore[union-attr]
        pool = self.pool
        delay = self.retry_backoff
        attempt = 0
        last: GeorouteError | None = None  # the failure being retried
        while True:
            if hints is not None and self.session_consistency and self.ryw:
                ryw_wire = self._ryw_wire
                if ryw_wire is None:
                    ryw_wire = self._ryw_wire = dict(self.ryw)
                hints.ryw = ryw_wire
            remaining: float | None = None
            if loop is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    if last is not None:  # out of time backing off: the real failure, not this
                        raise last
                    raise RequestTimeoutError(f"no reply within {timeout}s")
                if attempt and hints is not None:  # a retry has only what time is left
                    hints.timeout_ms = max(1, int(remaining * 1000))
            error: GeorouteError
            try:
                target = conn
                if target is None:
                    target = pool.acquire_nowait()
                    if target is None:
                        target = await self._acquire(remaining, timeout)
                if remaining is None:
                    future = target.send(message)
                    try:
                        reply = await future
                    finally:
                        target.forget(message.id)
                else:
                    reply = await target.request(message, remaining)
            except NoRouterAvailableError:
                raise
            except ConnectionLostError as exc:
                error = exc
            else:
                if type(reply) is not Error:
                    token = getattr(reply, "ryw_token", None)
                    if token:
                        self._observe_token(token)
                    for token in getattr(reply, "ryw_tokens", None) or ():  # several shards
                        self._observe_token(token)
                    return reply, target
                error = error_from_reply(reply)
                if isinstance(error, ResultUndeliverableError) and error.ryw_token:
                    self._observe_token(error.ryw_token)  # it applied: later reads see it
            if conn is not None or not retry or not error.retryable:
                if isinstance(error, ConnectionLostError) and error.retryable:
                    # Lost after it may have been sent: it may have applied. Sending it again
                    # is the caller's decision, not a default.
                    error.retryable = False
                raise error
            if attempt >= self.max_retries:
                raise error
            attempt += 1
            last = error
            pause = delay if loop is None else min(delay, max(0.0, deadline - loop.time()))
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.retry_backoff_max)

    async def _acquire(self, remaining: float | None, timeout: float | None) -> Connection:
        if remaining is None:
            return await self.pool.acquire()
        try:
            async with asyncio.timeout(remaining):
                return await self.pool.acquire()
        except TimeoutError as exc:
            if isinstance(exc, GeorouteError):
                raise
            raise RequestTimeoutError(f"no router connection within {timeout}s") from exc
