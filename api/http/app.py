"""`create_app(client, settings)`: the Starlette application."""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import client
from api.domain import Domain
from api.errors import ApiError
from api.http import routes_accounts, routes_commerce, routes_learning
from api.http.dispatch import Dispatch
from api.http.docs import docs_routes
from api.http.edge import Edge
from api.http.openapi import openapi_document
from api.http.operations import Endpoint, Operation
from api.http.problems import problem_response
from api.http.ratelimit import TokenBuckets
from api.settings import Settings

__all__ = ["OPERATIONS", "PREFIX", "create_app"]

PREFIX = "/api/v1"
OPERATIONS: list[Operation] = [
    *routes_accounts.OPERATIONS, *routes_learning.OPERATIONS, *routes_commerce.OPERATIONS]
_TITLE = "georoute e-learning API"
_VERSION = "1.0.0"


class _Status(ApiError):
    """Starlette's own 404/405 (no such route or method), as problems."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = {404: "not-found", 405: "method-not-allowed"}.get(status, "http-error")
        self.title = {404: "Not found", 405: "Method not allowed"}.get(status, "HTTP error")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    problem = _Status(exc.status_code, "no such resource" if exc.status_code == 404
                      else str(exc.detail))
    problem.headers.update(exc.headers or {})
    return problem_response(problem, instance=request.url.path,
                            request_id=request.scope.get("georoute.request_id"))


def create_app(db: client.Client, settings: Settings, *, domain: Domain | None = None,
               rate_limit: bool = True) -> Starlette:
    """The API over an open client session. `domain` may be given (tests pass one with cheap
    password hashing); `rate_limit=False` turns both token buckets off."""
    domain = domain or Domain(db, settings)
    per_user = per_ip = None
    if rate_limit:
        per_user = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
        per_ip = TokenBuckets(settings.rate_limit_per_minute, settings.rate_limit_burst)
    document = openapi_document(OPERATIONS, prefix=PREFIX, title=_TITLE, version=_VERSION,
                                metrics_url=settings.metrics_url or None)
    document_bytes = json.dumps(document).encode()

    async def openapi(request: Request) -> Response:
        return Response(document_bytes, media_type="application/json")

    endpoints = [Endpoint(op, domain, per_user) for op in OPERATIONS]
    routes: list[BaseRoute] = [endpoint.route(PREFIX) for endpoint in endpoints]
    routes.append(Route(PREFIX + "/openapi.json", openapi, methods=["GET"]))
    routes += docs_routes(PREFIX + "/openapi.json")
    middleware = []
    if settings.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"], max_age=600))
    middleware.append(Middleware(Edge, max_body_bytes=settings.max_body_bytes,
                                 ip_buckets=per_ip))
    # The operations are found by method and path shape before Starlette's router is asked
    # (which tries every route's pattern in turn): see api/http/dispatch.py.
    middleware.append(Middleware(Dispatch, endpoints=[
        (e.op.method, PREFIX + e.op.path, e.asgi) for e in endpoints]))
    handlers: dict[Any, Any] = {HTTPException: _http_error}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.domain = domain
    app.state.openapi = document
    return app
