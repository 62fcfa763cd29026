"""The API's one error hierarchy. Each class carries its HTTP status and its problem type
(RFC 9457); the domain raises them, the HTTP layer renders them as application/problem+json.
A message is written for the API's user: never SQL text, never a stack trace."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "FieldError",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
]


class FieldError:
    """One bad field of a request: where (`body`, `query`, `path`, `header`), its dotted name,
    and why."""

    __slots__ = ("field", "location", "message")

    def __init__(self, location: str, field: str, message: str) -> None:
        self.location = location
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"in": self.location, "field": self.field, "message": self.message}


class ApiError(Exception):
    """Base: `status`, a problem `type` slug and `title`, and a `detail` for this occurrence."""

    status = 500
    slug = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] = {}


class BadRequest(ApiError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(ApiError):
    """No valid credentials: a missing, malformed, expired or forged token, or a bad login."""

    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = 'Bearer realm="georoute", error="invalid_token"'


class Forbidden(ApiError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ApiError):
    status = 409
    slug = "conflict"
    title = "Conflict with the current state"


class PayloadTooLarge(ApiError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class InvalidInput(ApiError):
    """422: the request is well-formed but its values are not acceptable. `errors` name each
    bad field when the request's shape was checked."""

    status = 422
    slug = "validation-error"
    title = "Invalid request"

    def __init__(self, detail: str | None = None, errors: list[FieldError] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail, **extra)
        if errors:
            self.extra["errors"] = [e.as_dict() for e in errors]


class IdempotencyKeyReused(InvalidInput):
    """An Idempotency-Key sent again with another request body (draft-ietf-httpapi-
    idempotency-key-header: 422)."""

    slug = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class RateLimited(ApiError):
    status = 429
    slug = "rate-limited"
    title = "Too many requests"

    def __init__(self, retry_after: int, detail: str | None = None) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after)


class Unavailable(ApiError):
    """503: the router or a database node cannot serve now; retrying later may succeed."""

    status = 503
    slug = "unavailable"
    title = "Service unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["Retry-After"] = str(retry_after)
