"""RFC 9457 problem details: every error the API answers is application/problem+json."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

from api.errors import ApiError

__all__ = ["PROBLEM_TYPE_PREFIX", "problem_body", "problem_parts", "problem_response"]

PROBLEM_TYPE_PREFIX = "urn:georoute:problem:"
MEDIA_TYPE = "application/problem+json"
_MEDIA_TYPE_HEADER = (b"content-type", MEDIA_TYPE.encode())


def problem_body(status: int, slug: str, title: str, detail: str, *, instance: str | None,
                 request_id: str | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    if request_id is not None:
        body["request_id"] = request_id
    if extra:
        body.update(extra)
    return body


def problem_response(exc: ApiError, *, instance: str | None = None,
                     request_id: str | None = None) -> Response:
    body = problem_body(exc.status, exc.slug, exc.title, exc.detail, instance=instance,
                        request_id=request_id, extra=exc.extra)
    return Response(json.dumps(body, default=str), status_code=exc.status,
                    headers=exc.headers, media_type=MEDIA_TYPE)


def problem_parts(exc: ApiError, *, instance: str | None,
                  request_id: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """A problem's body and raw ASGI headers (its type, length and the error's own headers,
    Retry-After for one), for the paths that send without a Starlette Response."""
    body = json.dumps(problem_body(exc.status, exc.slug, exc.title, exc.detail,
                                   instance=instance, request_id=request_id, extra=exc.extra),
                      default=str).encode()
    headers = [_MEDIA_TYPE_HEADER, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    return body, headers
