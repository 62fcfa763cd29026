"""The document store: the collections and unique indexes `georoute db migrate` creates on
the real SecantusDB/MongoDB, and documents checked before they are written (the shapes
themselves: tests/unit/test_document_shapes.py)."""

from __future__ import annotations

import uuid

import pytest
from pymongo.errors import DuplicateKeyError

from router.config import Config
from router.tools.db.documents import (
    COURSE_CONTENT,
    USER_PREFERENCES,
    DocumentStore,
    DocumentValidationError,
)
from tests.support.documents import content, preferences


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
