"""The fast dispatch (api/http/dispatch.py) picks, for every operation, the route Starlette's
router would pick, and hands everything else on to Starlette unchanged (HEAD, unknown paths
and methods, trailing slashes, empty segments, a root path)."""

from __future__ import annotations

import uuid
from typing import Any, cast

import httpx
from starlette.routing import Match, Route
from starlette.types import Receive, Scope, Send

from api.http import OPERATIONS, PREFIX
from api.http.dispatch import Dispatch
from api.http.operations import Endpoint


class _Inner:
    """The app behind the dispatch: records the paths it was handed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen.append((scope["method"], scope["path"]))


def _endpoints() -> list[Endpoint]:
    return [Endpoint(op, cast(Any, None), None) for op in OPERATIONS]


def _dispatch(inner: _Inner) -> Dispatch:
    return Dispatch(inner, endpoints=[(e.op.method, PREFIX + e.op.path, e.asgi)
                                      for e in _endpoints()])


def _starlette_choice(routes: list[Route], method: str, path: str) -> str | None:
    """The operation Starlette's router runs for (method, path): the first full match."""
    scope = {"type": "http", "method": method, "path": path, "root_path": ""}
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            return str(child["endpoint"].__name__)
    return None


def _dispatch_choice(dispatch: Dispatch, method: str, path: str) -> str | None:
    found = dispatch.match(method, path)
    if found is None:
        return None
    endpoint = cast(Any, found[0]).__self__
    assert isinstance(endpoint, Endpoint)
    return endpoint.op.operation_id


def test_every_operation_is_found_as_starlette_finds_it() -> None:
    routes = [e.route(PREFIX) for e in _endpoints()]
    dispatch = _dispatch(_Inner())
    ids = {"me", "search", str(uuid.uuid4())}
    tried = 0
    for op in OPERATIONS:
        for value in ids:
            path = PREFIX + op.path
            for name in op.params():
                path = path.replace("{" + name + "}", value)
            chosen = _dispatch_choice(dispatch, op.method, path)
            assert chosen == _starlette_choice(routes, op.method, path), (op.method, path)
            assert chosen is not None
            tried += 1
    assert tried == 3 * len(OPERATIONS)
    # Declaration order decides between a literal and a parameter, as in Starlette.
    assert _dispatch_choice(dispatch, "GET", PREFIX + "/users/me") == "get_me"
    assert _dispatch_choice(dispatch, "GET", PREFIX + "/courses/search") == "search_courses"
    assert _dispatch_choice(dispatch, "GET", f"{PREFIX}/courses/{uuid.uuid4()}") == "get_course"
    # A parameter found is handed over as its text, validated by the endpoint.
    found = dispatch.match("POST", f"{PREFIX}/enrollments/e1/lessons/l2/complete")
    assert found is not None and found[1] == {"enrollment_id": "e1", "lesson_id": "l2"}


def test_declaration_order_wins_with_a_parameter_anywhere() -> None:
    """Templates with a parameter where the others have their resource name: no keying by
    it, and the first declared match wins, as in Starlette."""

    def endpoint(name: str) -> Any:
        async def handle(scope: Scope, receive: Receive, send: Send,
                         params: dict[str, str]) -> None:
            raise AssertionError("not called")

        handle.__name__ = name
        return handle

    declared = [("GET", "/v/{kind}/list", "by_kind"), ("GET", "/v/users/list", "users"),
                ("GET", "/v/users/{id}", "user"), ("POST", "/v/{kind}/list", "post")]
    dispatch = Dispatch(_Inner(), endpoints=[(m, t, endpoint(n)) for m, t, n in declared])

    def chosen(method: str, path: str) -> str | None:
        found = dispatch.match(method, path)
        return None if found is None else str(found[0].__name__)

    assert chosen("GET", "/v/users/list") == "by_kind"
    assert chosen("GET", "/v/users/7") == "user"
    assert chosen("POST", "/v/users/list") == "post"
    assert chosen("GET", "/w/users/list") is None
    assert chosen("GET", "/v") is None
    assert chosen("DELETE", "/v/users/list") is None


async def test_what_it_does_not_find_goes_on_to_starlette() -> None:
    inner = _Inner()
    dispatch = _dispatch(inner)

    async def receive() -> Any:
        raise AssertionError("not read")

    async def send(message: Any) -> None:
        raise AssertionError("nothing is answered by the dispatch itself")

    handed = [
        ("HEAD", PREFIX + "/categories"),       # Starlette answers HEAD for a GET route
        ("DELETE", PREFIX + "/courses"),        # a known path, another method: 405
        ("GET", PREFIX + "/no/such/route"),     # 404
        ("GET", PREFIX + "/categories/"),       # Starlette's trailing-slash redirect
        ("GET", PREFIX + "/courses/"),          # an empty parameter is no parameter
        ("GET", "/docs"),
        ("GET", PREFIX + "/openapi.json"),
    ]
    for method, path in handed:
        await dispatch({"type": "http", "method": method, "path": path, "root_path": ""},
                       receive, send)
    await dispatch({"type": "http", "method": "GET", "path": PREFIX + "/categories",
                    "root_path": "/mounted"}, receive, send)
    assert inner.seen == [*handed, ("GET", PREFIX + "/categories")]


async def test_head_and_unknown_methods_still_answer_as_before(http: httpx.AsyncClient) -> None:
    got = await http.get("/categories")
    head = await http.head("/categories")
    assert (got.status_code, head.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["x-request-id"]
    refused = await http.put("/categories")
    assert refused.status_code == 405
    assert refused.headers["content-type"] == "application/problem+json"
    assert "GET" in refused.headers["allow"]
