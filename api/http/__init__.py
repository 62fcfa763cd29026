"""The HTTP face of the domain: Starlette routes declared as operations, RFC 9457 problems,
the edge middleware (request ids, access log, rate limit, body limit), OpenAPI and /docs."""

from api.http.app import OPERATIONS, PREFIX, create_app

__all__ = ["OPERATIONS", "PREFIX", "create_app"]
