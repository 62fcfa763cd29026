"""The document store's two collections and their shapes: what a document must look like
before it is written, checked in plain Python with errors naming the offending field. Pure:
the router checks writes with it (router/node.py gives it to router/backend/docstore.py), and
`georoute db seed` checks what it writes (router/tools/db/documents.py).

`course_content` holds one document per lesson (the lesson body, video, attachments, quiz);
`user_preferences` one per user. Both are keyed by the PostgreSQL id (as a string) and carry
a region: one of the configured shards (router.toml's [shards.*]).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from router.core.errors import DocumentValidationError

__all__ = [
    "COURSE_CONTENT",
    "USER_PREFERENCES",
    "DocumentShapes",
    "DocumentValidationError",
    "Field",
]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")


@dataclass(frozen=True, slots=True)
class Field:
    """One field's shape: a type, whether it is required, and optional constraints."""

    kind: type | tuple[type, ...]
    required: bool = True
    nullable: bool = False
    choices: tuple[Any, ...] = ()
    pattern: re.Pattern[str] | None = None
    min_value: float | None = None
    max_value: float | None = None
    max_length: int | None = None
    items: Field | None = None
    properties: Mapping[str, Field] = field(default_factory=dict)


def _string(**kw: Any) -> Field:
    return Field(str, **kw)


COURSE_CONTENT = "course_content"
USER_PREFERENCES = "user_preferences"

_ATTACHMENT = Field(
    dict,
    properties={
        "name": _string(max_length=200),
        "url": _string(pattern=_URL),
    },
)
_QUIZ_QUESTION = Field(
    dict,
    properties={
        "question": _string(max_length=1000),
        "choices": Field(list, items=_string(max_length=300)),
        "answer": Field(int, min_value=0),
    },
)

def _schemas(regions: tuple[str, ...]) -> dict[str, dict[str, Field]]:
    return {
        COURSE_CONTENT: {
            "_id": _string(pattern=_UUID),
            "lesson_id": _string(pattern=_UUID),
            "course_id": _string(pattern=_UUID),
            "region": _string(choices=regions),
            "format": _string(choices=("video", "article", "quiz")),
            "title": _string(max_length=300),
            "body": _string(max_length=200_000),
            "video_url": _string(required=False, nullable=True, pattern=_URL),
            "duration_seconds": Field(int, min_value=0),
            "attachments": Field(list, items=_ATTACHMENT),
            "quiz": Field(list, required=False, items=_QUIZ_QUESTION),
            "updated_at": Field(datetime),
        },
        USER_PREFERENCES: {
            "_id": _string(pattern=_UUID),
            "user_id": _string(pattern=_UUID),
            "region": _string(choices=regions),
            "language": _string(pattern=re.compile(r"^[a-z]{2}(-[A-Z]{2})?$")),
            "timezone": _string(max_length=64),
            "theme": _string(choices=("light", "dark", "system")),
            "notifications": Field(
                dict,
                properties={
                    "email": Field(bool),
                    "push": Field(bool),
                    "weekly_digest": Field(bool),
                },
            ),
            "interests": Field(list, items=_string(max_length=64)),
            "updated_at": Field(datetime),
        },
    }


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array",
             dict: "object", datetime: "datetime"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check(collection: str, path: str, spec: Field, value: Any) -> None:
    def fail(message: str) -> None:
        raise DocumentValidationError(collection, path, message)

    if value is None:
        if not spec.nullable:
            fail("must not be null")
        return
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    # bool is an int in Python, but an integer field must not accept True.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        fail(f"expected {_type_name(spec.kind)}, got {type(value).__name__}")
    if spec.choices and value not in spec.choices:
        fail(f"must be one of {', '.join(map(str, spec.choices))}, got {value!r}")
    if spec.pattern is not None and not spec.pattern.match(value):
        fail(f"{value!r} does not match {spec.pattern.pattern}")
    if spec.max_length is not None and len(value) > spec.max_length:
        fail(f"longer than {spec.max_length}")
    if spec.min_value is not None and value < spec.min_value:
        fail(f"must be >= {spec.min_value}, got {value}")
    if spec.max_value is not None and value > spec.max_value:
        fail(f"must be <= {spec.max_value}, got {value}")
    if spec.items is not None:
        for i, item in enumerate(value):
            _check(collection, f"{path}[{i}]", spec.items, item)
    if spec.properties:
        _check_object(collection, path + ".", spec.properties, value)


def _check_object(collection: str, prefix: str, schema: Mapping[str, Field], doc: Any) -> None:
    for name in doc:
        if name not in schema:
            raise DocumentValidationError(collection, prefix + str(name), "unknown field")
    for name, spec in schema.items():
        if name not in doc:
            if spec.required:
                raise DocumentValidationError(collection, prefix + name, "is required")
            continue
        _check(collection, prefix + name, spec, doc[name])


def _validate(schemas: Mapping[str, Mapping[str, Field]], collection: str,
              doc: Mapping[str, Any]) -> None:
    schema = schemas.get(collection)
    if schema is None:
        raise DocumentValidationError(collection, "", "unknown collection")
    if not isinstance(doc, Mapping):
        raise DocumentValidationError(collection, "", "a document must be an object")
    _check_object(collection, "", schema, doc)
    if collection == COURSE_CONTENT:
        if doc["_id"] != doc["lesson_id"]:
            raise DocumentValidationError(collection, "_id", "must equal lesson_id")
        for i, q in enumerate(doc.get("quiz", [])):
            if q["answer"] >= len(q["choices"]):
                raise DocumentValidationError(
                    collection, f"quiz[{i}].answer", "must index one of the choices"
                )
    if collection == USER_PREFERENCES and doc["_id"] != doc["user_id"]:
        raise DocumentValidationError(collection, "_id", "must equal user_id")


class DocumentShapes:
    """The collections' shapes for a cluster whose regions are `regions` (its shard names)."""

    def __init__(self, regions: Iterable[str]) -> None:
        self.regions = tuple(regions)
        self.schemas = _schemas(self.regions)

    def validate(self, collection: str, doc: Mapping[str, Any]) -> None:
        """Raise DocumentValidationError naming the first field that does not fit the shape."""
        _validate(self.schemas, collection, doc)
