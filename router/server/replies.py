"""Reply frames that both paths make: rows with their column types (a value with no wire form
is named by its column), and a reply's route from an Outcome."""

from __future__ import annotations

from typing import Any

from protocol import EncodeError, Encoder, RouteInfo
from router.backend.wirevalues import name_unencodable, types_of
from router.engine.outcome import Outcome

__all__ = ["encode_rows", "route_of_outcome"]


def route_of_outcome(outcome: Outcome) -> RouteInfo | None:
    if not outcome.shard:  # a transaction over shards that opened none
        return None
    return RouteInfo(outcome.shard, outcome.node, outcome.role)


def encode_rows(encoder: Encoder, request_id: int, columns: list[str], rows: list[Any],
                status: str, route: RouteInfo | list[str] | None, token: str | None,
                tokens: tuple[str, ...] = ()) -> bytes:
    try:
        return encoder.encode_rows(request_id, columns, rows, status, route, token,
                                   types_of(columns), tokens)
    except EncodeError as exc:
        named = name_unencodable(exc, columns, rows)
        if named is None:
            raise
        raise named from exc
