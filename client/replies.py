"""Turning reply messages into what the client's methods return."""

from __future__ import annotations

from typing import Any

from client.errors import ProtocolViolationError
from client.record import Record, records
from protocol import DocReply, Reply, Rows, Status

__all__ = ["doc_result_of", "rows_of", "status_of"]


def rows_of(reply: Reply) -> list[Record]:
    if isinstance(reply, Rows):
        return records(reply.columns, reply.rows)
    if isinstance(reply, Status):
        return []
    raise ProtocolViolationError(f"expected Rows, got {type(reply).__name__}")


def status_of(reply: Reply) -> str:
    if isinstance(reply, Status | Rows):
        return reply.status
    raise ProtocolViolationError(f"expected Status, got {type(reply).__name__}")


def doc_result_of(reply: Reply) -> Any:
    if isinstance(reply, DocReply):
        return reply.result
    raise ProtocolViolationError(f"expected DocReply, got {type(reply).__name__}")
