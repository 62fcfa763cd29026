"""Requests built from the API's own OpenAPI document, for tests that walk every operation
(tests/api/test_injection.py, tests/api/test_escalation.py): a valid value for each field
from its schema and name (real ids where an id is asked for), each string's place, and who
may call what."""

from __future__ import annotations

import copy
import datetime as dt
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from api.domain import Domain
from tests.api.conftest import PASSWORD, Person, build_course, email, make_admin, signup

__all__ = ["Call", "Context", "calls", "make_context"]


@dataclass
class Context:
    """Real rows for the requests' ids, and who may call what."""

    student: Person
    instructor: Person
    admin: Person
    ids: dict[str, str]


async def make_context(http: httpx.AsyncClient, domain: Domain, category_id: str) -> Context:
    """A student enrolled (and paid) in an instructor's course, an admin, and the ids."""
    instructor = await signup(http, role="instructor")
    student = await signup(http)
    admin = await make_admin(http, domain)
    course = await build_course(http, instructor, category_id, title="Injection target",
                                price_cents=500, lessons=1)
    r = await http.get(f"/courses/{course.course_id}")
    module_id = r.json()["modules"][0]["module_id"]
    r = await http.post("/enrollments", headers=student.headers,
                        json={"course_id": course.course_id})
    enrollment_id = r.json()["enrollment_id"]
    r = await http.post("/payments", headers=student.headers | {
        "Idempotency-Key": f"inj-{uuid.uuid4().hex}"}, json={"enrollment_id": enrollment_id})
    payment_id = r.json()["payment_id"]
    ids = {"course_id": course.course_id, "module_id": module_id, "lesson_id": course.lessons[0],
           "enrollment_id": enrollment_id, "payment_id": payment_id,
           "user_id": student.user_id, "category_id": category_id}
    return Context(student, instructor, admin, ids)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    if "anyOf" in schema:  # Optional[X]: the X
        options = [_resolve(doc, s) for s in schema["anyOf"]]
        return next((s for s in options if s.get("type") != "null"), options[0])
    return schema


_STRINGS = {"email": None, "password": PASSWORD, "full_name": "Ada Tester", "country": "FR",
            "city": "Lyon", "currency": "EUR", "language": "en", "timezone": "UTC",
            "video_url": "https://example.com/v.mp4", "url": "https://example.com/a.pdf",
            "code": "SAVE10", "q": "course", "title": "A title", "body": "Some words",
            "description": "About it", "Idempotency-Key": None, "refresh_token": "x.y",
            "coupon": "SAVE10", "coupon_code": None, "cursor": None, "role": None,
            "level": None, "region": None, "name": "notes.pdf", "question": "Why?"}
_NUMBERS = {"rating": 5, "price_cents": 0, "percent_off": 10, "amount_off_cents": None,
            "limit": 5, "duration_seconds": 60, "seconds_spent": 30, "answer": 0,
            "max_redemptions": 5, "capacity": None, "max_price_cents": None}


def _value(doc: dict[str, Any], schema: dict[str, Any], name: str, ids: dict[str, str]) -> Any:
    """A valid value for field `name` of `schema` (as valid as a schema and a name tell)."""
    schema = _resolve(doc, schema)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "string":
        fmt = schema.get("format")
        if fmt == "uuid":
            return ids.get(name, str(uuid.uuid4()))
        if fmt == "date":
            return "2026-01-01" if name == "from" else "2026-12-31"
        if fmt == "date-time":
            return (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).isoformat()
        if name == "email":
            return email("inj")
        if name == "Idempotency-Key":
            return f"inj-{uuid.uuid4().hex}"
        return _STRINGS.get(name) or "text"
    if kind == "integer":
        return _NUMBERS.get(name, schema.get("minimum", 1))
    if kind == "boolean":
        return False
    if kind == "array":
        item = _value(doc, schema.get("items", {}), name, ids)
        return [item, item] if name == "choices" else [item]
    if kind == "object":
        return {k: _value(doc, v, k, ids) for k, v in schema.get("properties", {}).items()}
    return None


def _string_leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The paths of every string inside `value` (dict keys and list indexes)."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _string_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _string_leaves(v, (*path, i))


def _put(value: Any, path: tuple[Any, ...], new: str) -> Any:
    out = copy.deepcopy(value)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return out


@dataclass
class Call:
    method: str
    template: str
    params: dict[str, dict[str, Any]]  # "path", "query", "header" -> name -> value
    body: Any
    headers: dict[str, str]

    def fields(self) -> Iterator[tuple[str, tuple[Any, ...]]]:
        for where in ("path", "query", "header"):
            for name, v in self.params[where].items():
                if isinstance(v, str):
                    yield where, (name,)
        if self.body is not None:
            for leaf in _string_leaves(self.body):
                yield "body", leaf

    def with_payload(self, where: str, leaf: tuple[Any, ...], payload: str) -> Call:
        params = copy.deepcopy(self.params)
        body = self.body
        if where == "body":
            body = _put(body, leaf, payload)
        else:
            params[where][leaf[0]] = payload
        return Call(self.method, self.template, params, body, self.headers)

    async def send(self, http: httpx.AsyncClient) -> httpx.Response:
        path = self.template.removeprefix("/api/v1")
        for name, v in self.params["path"].items():
            path = path.replace("{" + name + "}", urllib.parse.quote(v, safe=""))
        # Header values go as UTF-8 bytes: a header carries bytes, not text.
        headers: dict[str, Any] = {**self.headers, **{k: v.encode() for k, v in
                                                     self.params["header"].items()}}
        return await http.request(self.method, path, params=self.params["query"] or None,
                                  headers=headers, json=self.body)


def _who(template: str, ctx: Context) -> Person | None:
    if template.startswith(("/api/v1/users/{", "/api/v1/analytics")) or template == "/api/v1/users":
        return ctx.admin
    if (template in ("/api/v1/courses", "/api/v1/courses/{course_id}/modules")
            or "publish" in template or "coupons" in template or "/modules/" in template
            or template == "/api/v1/lessons/{lesson_id}/content"):
        return ctx.instructor
    return ctx.student


def calls(doc: dict[str, Any], ctx: Context) -> list[Call]:
    calls = []
    for template, methods in doc["paths"].items():
        for method, op in methods.items():
            params: dict[str, dict[str, Any]] = {"path": {}, "query": {}, "header": {}}
            for p in op.get("parameters", []):
                params[p["in"]][p["name"]] = _value(doc, p.get("schema", {}), p["name"],
                                                    ctx.ids)
            body = None
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                body = _value(doc, schema, "", ctx.ids)
            who = _who(template, ctx) if op.get("security") else None
            calls.append(Call(method.upper(), template, params, body,
                              dict(who.headers) if who else {}))
    return calls
