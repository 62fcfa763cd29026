"""Document-store operations (course content, user preferences) through pymongo's async API.

The same code serves a local SecantusDB process and MongoDB or Atlas: only the URI differs.
Values cross the wire as protocol values: bson ObjectIds become protocol ObjectIds and back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import bson
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError, ServerSelectionTimeoutError

from protocol.values import ObjectId
from router.config import DocumentStoreConfig
from router.errors import GeorouteError

__all__ = ["DocOperationError", "DocStore", "DocUnavailableError", "DuplicateDocumentError"]

_COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_RESULTS = 10_000


class DocOperationError(Exception):
    """A bad document-store request (unknown op, bad arguments, invalid document)."""


class DocUnavailableError(Exception):
    """The document store cannot be reached. Safe to retry."""


class DuplicateDocumentError(Exception):
    pass


def to_bson(value: Any) -> Any:
    if isinstance(value, ObjectId):
        return bson.ObjectId(value.binary)
    if isinstance(value, dict):
        return {k: to_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_bson(v) for v in value]
    return value


def from_bson(value: Any) -> Any:
    if isinstance(value, bson.ObjectId):
        return ObjectId(value.binary)
    if isinstance(value, dict):
        return {k: from_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    return value


def _updated(result: Any) -> dict[str, Any]:
    return {
        "matched": result.matched_count,
        "modified": result.modified_count,
        "upserted_id": result.upserted_id,
    }


Validator = Callable[[str, dict[str, Any]], None]


class DocStore:
    def __init__(self, config: DocumentStoreConfig, validator: Validator | None = None) -> None:
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            config.uri, serverSelectionTimeoutMS=3000, tz_aware=True
        )
        self._db = self._client[config.database]
        self._validate = validator
        self._ops: dict[str, Callable[[Any, dict[str, Any]], Awaitable[Any]]] = {
            "find": self._find,
            "find_one": self._find_one,
            "insert_one": self._insert_one,
            "insert_many": self._insert_many,
            "update_one": self._update_one,
            "update_many": self._update_many,
            "delete_one": self._delete_one,
            "delete_many": self._delete_many,
            "count": self._count,
            "aggregate": self._aggregate,
            "distinct": self._distinct,
        }

    async def close(self) -> None:
        await self._client.close()

    async def ping(self) -> bool:
        try:
            await self._client.admin.command("ping")
        except PyMongoError:
            return False
        return True

    async def run(self, collection: str, op: str, args: dict[str, Any]) -> Any:
        if not _COLLECTION_NAME.match(collection):
            raise DocOperationError(f"invalid collection name {collection!r}")
        handler = self._ops.get(op)
        if handler is None:
            known = ", ".join(sorted(self._ops))
            raise DocOperationError(f"unknown document operation {op!r} (known: {known})")
        try:
            return from_bson(await handler(self._db[collection], to_bson(args)))
        except DuplicateKeyError as exc:
            raise DuplicateDocumentError(str(exc.details or exc)) from exc
        except ServerSelectionTimeoutError as exc:
            raise DocUnavailableError(f"document store unreachable: {exc}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise DocOperationError(f"bad arguments for {op}: {exc}") from exc

    def _check(self, collection: Any, document: Any) -> dict[str, Any]:
        if not isinstance(document, dict):
            raise DocOperationError("a document must be a map")
        if self._validate is not None:
            try:
                self._validate(collection.name, document)
            except GeorouteError as exc:
                raise DocOperationError(str(exc)) from exc
        return document

    async def _find(self, coll: Any, a: dict[str, Any]) -> list[Any]:
        cursor = coll.find(a.get("filter") or {}, a.get("projection"))
        if a.get("sort"):
            cursor = cursor.sort([(k, int(v)) for k, v in a["sort"]])
        if a.get("skip"):
            cursor = cursor.skip(int(a["skip"]))
        limit = min(int(a.get("limit") or MAX_RESULTS), MAX_RESULTS)
        return await cursor.limit(limit).to_list(length=limit)

    async def _find_one(self, coll: Any, a: dict[str, Any]) -> Any:
        return await coll.find_one(a.get("filter") or {}, a.get("projection"))

    async def _insert_one(self, coll: Any, a: dict[str, Any]) -> Any:
        result = await coll.insert_one(self._check(coll, a["document"]))
        return {"inserted_id": result.inserted_id}

    async def _insert_many(self, coll: Any, a: dict[str, Any]) -> Any:
        docs = [self._check(coll, d) for d in a["documents"]]
        result = await coll.insert_many(docs, ordered=True)
        return {"inserted_ids": list(result.inserted_ids)}

    async def _update_one(self, coll: Any, a: dict[str, Any]) -> Any:
        r = await coll.update_one(a["filter"], a["update"], upsert=bool(a.get("upsert")))
        return _updated(r)

    async def _update_many(self, coll: Any, a: dict[str, Any]) -> Any:
        r = await coll.update_many(a["filter"], a["update"], upsert=bool(a.get("upsert")))
        return _updated(r)

    async def _delete_one(self, coll: Any, a: dict[str, Any]) -> Any:
        return {"deleted": (await coll.delete_one(a["filter"])).deleted_count}

    async def _delete_many(self, coll: Any, a: dict[str, Any]) -> Any:
        return {"deleted": (await coll.delete_many(a["filter"])).deleted_count}

    async def _count(self, coll: Any, a: dict[str, Any]) -> Any:
        return await coll.count_documents(a.get("filter") or {})

    async def _aggregate(self, coll: Any, a: dict[str, Any]) -> Any:
        cursor = await coll.aggregate(a["pipeline"])
        return await cursor.to_list(length=MAX_RESULTS)

    async def _distinct(self, coll: Any, a: dict[str, Any]) -> Any:
        return await coll.distinct(a["key"], a.get("filter") or {})
