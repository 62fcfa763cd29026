"""The request id a caller gives the requests it sends (PROTOCOL.md 2.2, `request_id`): set
for a context (`with client.request_id("abc"):`), sent with every request made in it (its
tasks included), and written by the router into its log lines about those requests. A web
tier sets its own request's id (X-Request-ID) here, so one id follows a request end to end."""

from __future__ import annotations

from contextvars import ContextVar, Token

from client.errors import InvalidRequestError
from protocol import check_request_id

__all__ = ["current_request_id", "request_id"]

# Read once per request sent: a ContextVar.get costs tens of nanoseconds, and nothing is sent
# when no id is set.
_current: ContextVar[str | None] = ContextVar("georoute_request_id", default=None)


class request_id:  # lower case: it reads as the function it was (`with client.request_id(...)`)
    """Send `value` as the request id of every request made in this context. An invalid id
    (not a str, empty, over 128 characters, a space or a non-ASCII character) raises
    InvalidRequestError here, before anything is sent. (A class, not a generator context
    manager: a web tier enters one per request, and contextlib's costs about four times as
    much.)"""

    __slots__ = ("_token", "value")

    def __init__(self, value: str) -> None:
        try:
            check_request_id(value)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"invalid request id: {exc}",
                                      detail={"field": "request_id"}) from exc
        self.value = value
        self._token: Token[str | None] | None = None

    def __enter__(self) -> str:
        self._token = _current.set(self.value)
        return self.value

    def __exit__(self, *exc_info: object) -> None:
        assert self._token is not None, "request_id exited without being entered"
        _current.reset(self._token)
        self._token = None


def current_request_id() -> str | None:
    """The request id set for this context, or None."""
    return _current.get()
