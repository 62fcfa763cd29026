"""A statement that may have written ran, but its reply cannot be sent (a value with no wire
form, a reply over router.max_frame_bytes): the client must learn that it applied, with its
status and read-your-writes token, never read it as a failure that changed nothing. The error
that says so, ResultUndeliverable, lives with the engine's others (engine/errors.py)."""

from __future__ import annotations

from typing import Any

from router.engine.errors import ResultUndeliverable

__all__ = ["ResultUndeliverable", "rowcount_of"]


def rowcount_of(status: str, rows: list[Any]) -> int:
    """The rows a command tag counts ("INSERT 0 3" -> 3), else the rows returned."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else len(rows)
