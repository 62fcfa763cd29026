"""`create_app(client, settings)`: the Starlette application."""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

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


class _Api(Starlette):
    """Starlette, behind the edge and the operations' dispatch (and CORS when configured): a
    request the dispatch finds (every operation's) never passes through Starlette's own
    middleware and router, whose wrappers cost more per request than the dispatch itself.
    The rest (the docs, the OpenAPI document, an unknown path) goes on to Starlette as
    before. The edge answers any unexpected exception with a 500 problem, as Starlette's
    error middleware did for it."""

    front: ASGIApp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.front(scope, receive, send)

    async def starlette(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


async def _server_error(request: Request, exc: Exception) -> Response:
    """An unexpected exception on a path Starlette serves: the same 500 problem the edge
    answers for the operations (the exception goes on to the edge, which logs it)."""
    return problem_response(ApiError("the request could not be completed"),
                            instance=request.url.path,
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
    handlers: dict[Any, Any] = {HTTPException: _http_error, Exception: _server_error}
    app = _Api(routes=routes, exception_handlers=handlers)
    # The operations are found by method and path shape before Starlette's router is asked
    # (which tries every route's pattern in turn): see api/http/dispatch.py.
    front: ASGIApp = Edge(Dispatch(app.starlette, endpoints=[
        (e.op.method, PREFIX + e.op.path, e.asgi) for e in endpoints]),
        max_body_bytes=settings.max_body_bytes, ip_buckets=per_ip)
    if settings.cors_origins:
        front = CORSMiddleware(
            front, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.front = front
    app.state.domain = domain
    app.state.openapi = document
    return app
