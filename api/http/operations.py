"""An operation is declared once: its method and path, who may call it, the shapes of its
query, body and response, and its handler. The same declaration makes the Starlette route
(authentication, role check, per-user rate limit, validation, problem responses) and the
OpenAPI document's entry."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.domain import Domain
from api.errors import ApiError, FieldError, Forbidden, InvalidInput, RateLimited, Unauthorized
from api.http.problems import problem_parts, problem_response
from api.http.ratelimit import TokenBuckets
from api.types import Principal, UserRole

__all__ = ["ANYONE", "Call", "Endpoint", "Header", "Operation", "bearer_token"]

# roles=ANYONE: any authenticated user; roles=None: no token needed.
ANYONE: frozenset[UserRole] = frozenset(UserRole)
_PATH_PARAM = re.compile(r"{([a-z_]+)}")
_JSON_TYPE = (b"content-type", b"application/json")


@dataclass(frozen=True, slots=True)
class Header:
    """A request header an operation reads (documented as a parameter)."""

    name: str
    description: str
    required: bool = False
    pattern: str | None = None


@dataclass(slots=True)
class Call:
    """One request as a handler sees it: already authenticated and validated."""

    domain: Domain
    request: Request
    principal: Principal | None
    path: dict[str, uuid.UUID]
    query: Any
    body: Any

    @property
    def by(self) -> Principal:
        assert self.principal is not None, "an operation with roles=None has no caller"
        return self.principal


Handler = Callable[[Call], Awaitable[BaseModel | None]]


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str  # under /api/v1; {name} parameters are ids (UUIDs)
    handler: Handler
    summary: str
    tag: str
    roles: frozenset[UserRole] | None = ANYONE
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()  # statuses it may answer beyond the ones every route has
    headers: tuple[Header, ...] = ()
    description: str = ""
    # roles=None, but a bearer token is read when sent (and refused, 401, when invalid).
    optional_bearer: bool = False

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.lstrip("_")

    def params(self) -> tuple[str, ...]:
        return tuple(_PATH_PARAM.findall(self.path))


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise Unauthorized("this operation needs a bearer access token")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _field_errors(exc: pydantic.ValidationError, location: str) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        name = ".".join(str(p) for p in err["loc"]) or location
        out.append(FieldError(location, name, err["msg"]))
    return out


class Endpoint:
    """One operation's request handling (authentication, role check, per-user rate limit,
    validation, problem responses), both as a Starlette endpoint (`route`) and as the fast
    path's ASGI endpoint (`asgi`, reached through api/http/dispatch.py), which sends the same
    status, headers and body without Starlette's Response object."""

    __slots__ = ("domain", "op", "params", "user_buckets")

    def __init__(self, op: Operation, domain: Domain, user_buckets: TokenBuckets | None) -> None:
        self.op = op
        self.domain = domain
        self.user_buckets = user_buckets
        self.params = op.params()

    def route(self, prefix: str) -> Route:
        async def endpoint(request: Request) -> Response:
            status, body, problem = await self.outcome(request)
            if problem is not None:
                return problem_response(problem, instance=request.url.path,
                                        request_id=request.scope.get("georoute.request_id"))
            if body is None:
                return Response(status_code=status)
            return Response(body, status_code=status, media_type="application/json")

        endpoint.__name__ = self.op.operation_id
        return Route(prefix + self.op.path, endpoint, methods=[self.op.method])

    async def asgi(self, scope: Scope, receive: Receive, send: Send,
                   path_params: dict[str, str]) -> None:
        """The operation's answer, sent as the Starlette route sends it, with the request's
        id header (the edge's `georoute.request_id`); its status is left in the scope as
        `georoute.status` for the edge's access log."""
        scope["path_params"] = path_params
        status, body, problem = await self.outcome(Request(scope, receive))
        request_id = scope.get("georoute.request_id")
        headers: list[tuple[bytes, bytes]]
        if problem is not None:
            body, headers = problem_parts(problem, instance=scope["path"], request_id=request_id)
        elif body is None:  # as Response(status_code=204): no content-length, no type
            body, headers = b"", []
        else:
            headers = [(b"content-length", str(len(body)).encode()), _JSON_TYPE]
        if request_id is not None:
            headers.append((b"x-request-id", request_id.encode("latin-1")))
        scope["georoute.status"] = status
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def outcome(self, request: Request) -> tuple[int, bytes | None, ApiError | None]:
        """The operation's status and JSON body (None: no content), or its refusal."""
        try:
            call = await self._call(request)
            result = await self.op.handler(call)
        except ApiError as exc:
            return exc.status, None, exc
        if result is None:
            return 204, None, None
        return self.op.status, result.__pydantic_serializer__.to_json(result, by_alias=True), None

    async def _call(self, request: Request) -> Call:
        op = self.op
        principal = None
        if op.roles is not None:
            principal = self.domain.auth.authenticate(bearer_token(request))
            request.scope["georoute.user"] = str(principal.user_id)
            if self.user_buckets is not None:
                wait = self.user_buckets.take(f"user:{principal.user_id}")
                if wait:
                    raise RateLimited(TokenBuckets.retry_after(wait),
                                      "this user's request rate is over the limit")
            if principal.role not in op.roles:
                allowed = ", ".join(sorted(r.value for r in op.roles))
                raise Forbidden(f"this operation is for: {allowed}")
        path: dict[str, uuid.UUID] = {}
        if self.params:
            path_params = request.path_params
            bad = []
            for name in self.params:
                try:
                    path[name] = uuid.UUID(path_params[name])
                except ValueError:
                    bad.append(FieldError("path", name, "must be a UUID"))
            if bad:
                raise InvalidInput("invalid path parameter", errors=bad)
        query = None
        if op.query is not None:
            try:
                query = op.query.model_validate(dict(request.query_params))
            except pydantic.ValidationError as exc:
                raise InvalidInput("invalid query parameters",
                                   errors=_field_errors(exc, "query")) from None
        body = None
        if op.body is not None:
            raw = await request.body()
            if not raw:
                raise InvalidInput("a JSON body is required",
                                   errors=[FieldError("body", "body", "required")])
            try:
                body = op.body.model_validate_json(raw)
            except pydantic.ValidationError as exc:
                raise InvalidInput("invalid request body",
                                   errors=_field_errors(exc, "body")) from None
        return Call(self.domain, request, principal, path, query, body)
