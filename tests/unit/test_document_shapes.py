"""Document shapes (router/core/documents.py): each bad shape is refused naming the field, and
a document's region is one of the configured shards, however many there are."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from router.core.documents import (
    COURSE_CONTENT,
    USER_PREFERENCES,
    DocumentShapes,
    DocumentValidationError,
)
from tests.support.documents import content, preferences

SHAPES = DocumentShapes(("north_america", "europe", "asia"))


def test_valid_documents_pass() -> None:
    SHAPES.validate(COURSE_CONTENT, content())
    SHAPES.validate(USER_PREFERENCES, preferences())


@pytest.mark.parametrize(
    ("collection", "doc", "field", "message"),
    [
        (COURSE_CONTENT, content(format="podcast"), "format", "must be one of"),
        (COURSE_CONTENT, content(duration_seconds="5"), "duration_seconds", "expected integer"),
        (COURSE_CONTENT, content(duration_seconds=True), "duration_seconds", "expected integer"),
        (COURSE_CONTENT, content(duration_seconds=-1), "duration_seconds", "must be >= 0"),
        (COURSE_CONTENT, content(region="mars"), "region", "must be one of"),
        (COURSE_CONTENT, content(course_id="42"), "course_id", "does not match"),
        (COURSE_CONTENT, content(title=None), "title", "must not be null"),
        (COURSE_CONTENT, content(extra=1), "extra", "unknown field"),
        (COURSE_CONTENT, content(_id=str(uuid.uuid4())), "_id", "must equal lesson_id"),
        (COURSE_CONTENT, content(attachments=[{"name": "a", "url": "ftp://x"}]),
         "attachments[0].url", "does not match"),
        (COURSE_CONTENT, content(quiz=[{"question": "q", "choices": ["a"], "answer": 3}]),
         "quiz[0].answer", "must index one of the choices"),
        (USER_PREFERENCES, preferences(theme="neon"), "theme", "must be one of"),
        (USER_PREFERENCES, preferences(notifications={"email": "yes", "push": True,
                                                      "weekly_digest": False}),
         "notifications.email", "expected boolean"),
        (USER_PREFERENCES, preferences(notifications={"email": True}), "notifications.push",
         "is required"),
        (USER_PREFERENCES, preferences(interests="python"), "interests", "expected array"),
        (USER_PREFERENCES, preferences(updated_at="2026-01-01"), "updated_at",
         "expected datetime"),
    ],
)
def test_bad_shapes_are_rejected_naming_the_field(
    collection: str, doc: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(DocumentValidationError) as err:
        SHAPES.validate(collection, doc)
    assert err.value.field == field
    assert message in err.value.message
    assert f"field {field!r}" in str(err.value)


def test_missing_required_field() -> None:
    doc = preferences()
    del doc["timezone"]
    with pytest.raises(DocumentValidationError, match="'timezone': is required"):
        SHAPES.validate(USER_PREFERENCES, doc)
    with pytest.raises(DocumentValidationError, match="unknown collection"):
        SHAPES.validate("nope", doc)


def test_a_documents_region_is_a_configured_shard() -> None:
    with_africa = DocumentShapes(("north_america", "europe", "asia", "africa"))
    with_africa.validate(COURSE_CONTENT, content(region="africa"))
    with_africa.validate(USER_PREFERENCES, preferences(region="africa"))
    with pytest.raises(DocumentValidationError, match="must be one of") as err:
        SHAPES.validate(USER_PREFERENCES, preferences(region="africa"))
    assert err.value.field == "region"
    only_two = DocumentShapes(("europe", "asia"))
    with pytest.raises(DocumentValidationError, match="must be one of"):
        only_two.validate(COURSE_CONTENT, content(region="north_america"))
