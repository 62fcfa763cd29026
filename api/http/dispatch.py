"""Dispatch of the API's operations by method and path shape (pure ASGI), in front of the
Starlette app. Starlette's router tries its ~45 route patterns in order on every request; this
finds an operation by (method, number of path segments, the segment after the common prefix)
and compares a handful of segment tuples, in declaration order, so it picks exactly the route
Starlette would. Whatever it does not find (HEAD, /docs, the OpenAPI document, an unknown path
or method, a trailing slash) goes on to the Starlette app unchanged, whose routes stay the
declaration the OpenAPI document is built from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Dispatch", "FastEndpoint"]

# (scope, receive, send, path parameters) -> the response sent.
FastEndpoint = Callable[[Scope, Receive, Send, dict[str, str]], Awaitable[None]]
# A template's segments: a literal is a str to equal, a parameter is (name,).
_Segment = str | tuple[str]


def _segments(template: str) -> tuple[_Segment, ...]:
    out: list[_Segment] = []
    for part in template.split("/"):
        if part.startswith("{") and part.endswith("}"):
            out.append((part[1:-1],))
        else:
            out.append(part)
    return tuple(out)


class Dispatch:
    def __init__(self, app: ASGIApp, *,
                 endpoints: list[tuple[str, str, FastEndpoint]]) -> None:
        """`endpoints`: (method, full path template, endpoint), in Starlette's route order."""
        self.app = app
        templates = [(method, _segments(template), endpoint)
                     for method, template, endpoint in endpoints]
        # The literal segments every template starts with ("", "api", "v1"), compared once;
        # then the table is keyed by the next segment too when every template has a literal
        # there (the resource: "courses", "enrollments", ...).
        shortest = min((len(segments) for _, segments, _ in templates), default=0)
        head: list[str] = []
        for position in range(shortest):
            first = templates[0][1][position]
            if not isinstance(first, str) or any(segments[position] != first
                                                 for _, segments, _ in templates):
                break
            head.append(first)
        self._head = tuple(head)
        skip = len(head)
        self._keyed = bool(templates) and all(
            len(segments) > skip and isinstance(segments[skip], str)
            for _, segments, _ in templates)
        rest = skip + 1 if self._keyed else skip
        self._table: dict[tuple[str, int, str], list[tuple[tuple[_Segment, ...],
                                                           FastEndpoint]]] = {}
        for method, segments, endpoint in templates:
            key = (method, len(segments), str(segments[skip]) if self._keyed else "")
            self._table.setdefault(key, []).append((segments[rest:], endpoint))

    def match(self, method: str, path: str) -> tuple[FastEndpoint, dict[str, str]] | None:
        """The first operation (in declaration order) for `method` whose template matches
        `path` (a parameter is one non-empty segment, as Starlette's `{name}`), or None."""
        parts = path.split("/")
        skip = len(self._head)
        if len(parts) <= skip or tuple(parts[:skip]) != self._head:
            return None
        if self._keyed:
            candidates = self._table.get((method, len(parts), parts[skip]))
            skip += 1
        else:
            candidates = self._table.get((method, len(parts), ""))
        if candidates is None:
            return None
        rest = parts[skip:]
        for segments, endpoint in candidates:
            params: dict[str, str] = {}
            for want, got in zip(segments, rest, strict=True):
                if isinstance(want, str):
                    if want != got:
                        break
                elif got:
                    params[want[0]] = got
                else:
                    break
            else:
                return endpoint, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            found = self.match(scope["method"], scope["path"])
            if found is not None:
                await found[0](scope, receive, send, found[1])
                return
        await self.app(scope, receive, send)
