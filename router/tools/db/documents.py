"""The document store's collections in a running store: their indexes (`georoute db
migrate`) and the writes `georoute db seed` and `georoute health` make. Documents are checked
against their shapes (router/core/documents.py, the same check the router makes) before they
are written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReplaceOne
from pymongo.asynchronous.database import AsyncDatabase

from router.config import Config
from router.core.documents import (
    COURSE_CONTENT,
    USER_PREFERENCES,
    DocumentShapes,
    DocumentValidationError,
)

__all__ = [
    "COLLECTIONS",
    "COURSE_CONTENT",
    "USER_PREFERENCES",
    "DocumentStore",
    "DocumentValidationError",
    "ensure_collections",
]

COLLECTIONS: dict[str, list[IndexModel]] = {
    COURSE_CONTENT: [
        # The API reads a lesson's content by lesson id.
        IndexModel([("lesson_id", ASCENDING)], name="lesson_id_unique", unique=True),
        # The course page lists a course's lessons; seeding clears a region's documents.
        IndexModel([("course_id", ASCENDING)], name="course_id"),
        IndexModel([("region", ASCENDING)], name="region"),
    ],
    USER_PREFERENCES: [
        IndexModel([("user_id", ASCENDING)], name="user_id_unique", unique=True),
        IndexModel([("region", ASCENDING)], name="region"),
    ],
}


class DocumentStore:
    """The document store of a config: `async with DocumentStore(config) as store: ...`."""

    def __init__(self, config: Config, *, timeout_ms: int = 5000) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            config.document_store.uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            tz_aware=True,
        )
        self.db: AsyncDatabase[dict[str, Any]] = self._client[config.document_store.database]
        self.shapes = DocumentShapes(config.shards)

    async def __aenter__(self) -> DocumentStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> dict[str, Any]:
        return await self._client.admin.command("ping")

    async def ensure_collections(self) -> list[str]:
        existing = set(await self.db.list_collection_names())
        for name, indexes in COLLECTIONS.items():
            if name not in existing:
                await self.db.create_collection(name)
            await self.db[name].create_indexes(indexes)
        return list(COLLECTIONS)

    async def put(self, collection: str, doc: Mapping[str, Any]) -> None:
        """Validate, then insert or replace one document by its _id."""
        self.shapes.validate(collection, doc)
        await self.db[collection].replace_one({"_id": doc["_id"]}, dict(doc), upsert=True)

    async def put_many(
        self, collection: str, docs: Iterable[Mapping[str, Any]], *, batch_size: int = 1000,
        upsert: bool = True, on_batch: Callable[[int], object] | None = None,
    ) -> int:
        """Validate every document first, then write them in batches. Returns the count.

        upsert=False inserts (faster, for collections just cleared; duplicates raise)."""
        checked = list(docs)
        for doc in checked:
            self.shapes.validate(collection, doc)
        for start in range(0, len(checked), batch_size):
            batch = checked[start : start + batch_size]
            if upsert:
                await self.db[collection].bulk_write(
                    [ReplaceOne({"_id": d["_id"]}, dict(d), upsert=True) for d in batch],
                    ordered=False,
                )
            else:
                await self.db[collection].insert_many([dict(d) for d in batch], ordered=False)
            if on_batch is not None:
                on_batch(len(batch))
        return len(checked)

    async def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        return await self.db[collection].find_one({"_id": doc_id})

    async def delete_region(self, region: str, collections: Sequence[str] = tuple(COLLECTIONS)
                            ) -> int:
        deleted = 0
        for name in collections:
            result = await self.db[name].delete_many({"region": region})
            deleted += result.deleted_count
        return deleted


async def ensure_collections(config: Config) -> list[str]:
    """Create both collections and their indexes (idempotent)."""
    async with DocumentStore(config) as store:
        return await store.ensure_collections()
