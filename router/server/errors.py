"""What the client edge itself refuses: a well-framed request it does not serve."""

from __future__ import annotations

from protocol.errors import ErrorCode
from router.errors import GeorouteError

__all__ = ["ServerError", "UnsupportedRequest"]


class ServerError(GeorouteError):
    """Base of what the edge raises (no code of its own: each subclass has one)."""


class UnsupportedRequest(ServerError):
    """A request the router does not serve (an unknown admin op, an idempotency key on a
    document write); nothing was run."""

    code = ErrorCode.INVALID_REQUEST
