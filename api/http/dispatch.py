"""Dispatch of the API's operations by method and path shape (pure ASGI), in front of the
Starlette app. Starlette's router tries its ~45 route patterns in order on every request; this
finds an operation by (method, number of path segments) and compares a handful of segment
tuples, in declaration order, so it picks exactly the route Starlette would. Whatever it does
not find (HEAD, /docs, the OpenAPI document, an unknown path or method, a trailing slash) goes
on to the Starlette app unchanged, whose routes stay the declaration the OpenAPI document is
built from."""

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
        self._table: dict[tuple[str, int], list[tuple[tuple[_Segment, ...], FastEndpoint]]] = {}
        for method, template, endpoint in endpoints:
            segments = _segments(template)
            self._table.setdefault((method, len(segments)), []).append((segments, endpoint))

    def match(self, method: str, path: str) -> tuple[FastEndpoint, dict[str, str]] | None:
        """The first operation (in declaration order) for `method` whose template matches
        `path` (a parameter is one non-empty segment, as Starlette's `{name}`), or None."""
        parts = path.split("/")
        candidates = self._table.get((method, len(parts)))
        if candidates is None:
            return None
        for segments, endpoint in candidates:
            params: dict[str, str] = {}
            for want, got in zip(segments, parts, strict=True):
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
