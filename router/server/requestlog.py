"""The router's log line about one request: a failed one always, any one slower than
`router.log_min_duration_ms` (PostgreSQL's log_min_duration_statement), each with its kind,
what it ran, where, how long it took and the caller's request id (PROTOCOL.md 2.2)."""

from __future__ import annotations

import logging

from protocol import Admin, Batch, Begin, Commit, Doc, Message, Query, Rollback
from router.server.failures import Failure

__all__ = ["failed", "request_id_of", "slow"]

log = logging.getLogger("georoute.requests")

_TEXT_CHARS = 200  # of a statement's text in a log line; the rest is cut


def request_id_of(message: Message) -> str | None:
    """The caller's id for `message`: in its hints, or its trailing field (Commit, Rollback,
    Admin); None when it has none."""
    hints = getattr(message, "hints", None)
    if hints is not None:
        return hints.request_id
    return getattr(message, "request_id", None)


def _what(message: Message) -> str:
    """What the request asked for, short: repr() so that a newline in SQL cannot forge a
    line."""
    if type(message) is Query:
        return f"sql={_cut(message.sql)!r}"
    if type(message) is Batch:
        first = message.statements[0][0] if message.statements else ""
        return f"statements={len(message.statements)} sql={_cut(first)!r}"
    if type(message) is Doc:
        return f"doc={message.collection}.{message.op}"
    if type(message) is Begin:
        return "begin"
    if type(message) in (Commit, Rollback):
        return f"tx={message.tx}"  # type: ignore[union-attr]
    if type(message) is Admin:
        return f"admin={message.op}"
    return ""


def _cut(text: str) -> str:
    return text if len(text) <= _TEXT_CHARS else text[:_TEXT_CHARS] + "..."


def slow(peer: str, message: Message, seconds: float, where: str) -> None:
    """`message` was answered (from `where`, a shard and node) in `seconds`, at least the
    configured minimum."""
    log.info("request %s %d from %s: ok in %.1f ms on %s: %s", type(message).__name__,
             message.id, peer, seconds * 1000, where or "-", _what(message),
             extra={"request_id": request_id_of(message)})


def failed(peer: str, message: Message, seconds: float, failure: Failure) -> None:
    """`message` was answered with `failure` after `seconds`."""
    state = f" [{failure.sqlstate}]" if failure.sqlstate else ""
    log.info("request %s %d from %s: %s%s in %.1f ms: %s: %s", type(message).__name__,
             message.id, peer, failure.code.name, state, seconds * 1000,
             _cut(failure.message), _what(message),
             extra={"request_id": request_id_of(message)})
