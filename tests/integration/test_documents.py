"""The document store: shape validation names the offending field, and the collections and
unique indexes `georoute db migrate` creates on the real SecantusDB/MongoDB."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from router.config import Config
from router.tools.db.documents import (
    COURSE_CONTENT,
    USER_PREFERENCES,
    DocumentStore,
    DocumentValidationError,
    validate,
)


def content(**changes: Any) -> dict[str, Any]:
    lesson = str(uuid.uuid4())
    doc: dict[str, Any] = {
        "_id": lesson, "lesson_id": lesson, "course_id": str(uuid.uuid4()), "region": "europe",
        "format": "quiz", "title": "Joins", "body": "Text", "video_url": None,
        "duration_seconds": 300,
        "attachments": [{"name": "slides.pdf", "url": "https://cdn.example.com/s.pdf"}],
        "quiz": [{"question": "2+2?", "choices": ["3", "4"], "answer": 1}],
        "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    doc.update(changes)
    return doc


def preferences(**changes: Any) -> dict[str, Any]:
    user = str(uuid.uuid4())
    doc: dict[str, Any] = {
        "_id": user, "user_id": user, "region": "asia", "language": "ja",
        "timezone": "Asia/Tokyo", "theme": "dark",
        "notifications": {"email": True, "push": False, "weekly_digest": True},
        "interests": ["python"], "updated_at": datetime(2026, 1, 1, tzinfo=UTC),
    }
    doc.update(changes)
    return doc


def test_valid_documents_pass() -> None:
    validate(COURSE_CONTENT, content())
    validate(USER_PREFERENCES, preferences())


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
        validate(collection, doc)
    assert err.value.field == field
    assert message in err.value.message
    assert f"field {field!r}" in str(err.value)


def test_missing_required_field() -> None:
    doc = preferences()
    del doc["timezone"]
    with pytest.raises(DocumentValidationError, match="'timezone': is required"):
        validate(USER_PREFERENCES, doc)
    with pytest.raises(DocumentValidationError, match="unknown collection"):
        validate("nope", doc)


async def test_store_validates_before_writing_and_enforces_unique_ids(migrated: Config) -> None:
    async with DocumentStore(migrated) as store:
        good = content(region="north_america")
        await store.put(COURSE_CONTENT, good)
        stored = await store.get(COURSE_CONTENT, good["_id"])
        assert stored is not None and stored["quiz"][0]["answer"] == 1
        bad = content(format="podcast")
        with pytest.raises(DocumentValidationError):
            await store.put(COURSE_CONTENT, bad)
        assert await store.get(COURSE_CONTENT, bad["_id"]) is None
        with pytest.raises(DocumentValidationError):  # one bad document stops the batch
            await store.put_many(USER_PREFERENCES, [preferences(), preferences(theme="x")])
        names = {ix["name"] for ix in await (await store.db[COURSE_CONTENT].list_indexes()).to_list()}
        assert {"lesson_id_unique", "course_id", "region"} <= names
        # A second document for the same lesson under another _id hits the unique index.
        with pytest.raises(DuplicateKeyError):
            await store.db[COURSE_CONTENT].insert_one({**good, "_id": str(uuid.uuid4())})
        await store.db[COURSE_CONTENT].delete_one({"_id": good["_id"]})
        assert (await store.ping())["ok"] == 1
