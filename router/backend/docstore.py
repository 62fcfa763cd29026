"""Document-store operations (course content, user preferences) through pymongo's async API.

The same code serves a local SecantusDB process and MongoDB or Atlas: only the URI differs.
Values cross the wire as protocol values: bson ObjectIds become protocol ObjectIds and back.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import bson
from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from protocol.values import ObjectId
from router.backend.errors import (
    DocOperationError,
    DocTimeoutError,
    DocUnavailableError,
    DocUnknownOperationError,
    DuplicateDocumentError,
)
from router.config import DocumentStoreConfig
from router.errors import GeorouteError

__all__ = ["DocOperationError", "DocStore", "DocTimeoutError", "DocUnavailableError",
           "DocUnknownOperationError", "DuplicateDocumentError"]

_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # fullmatch: no dots, no "system."
MAX_RESULTS = 10_000
# How long one document-store operation may wait on its socket: a store that accepts a
# connection and then stalls must not hold requests for ever. Set as socketTimeoutMS, not
# pymongo's timeoutMS: timeoutMS also overrides serverSelectionTimeoutMS, so every request to
# a store that is down waited the whole 10 s and timed out (outcome unknown) instead of being
# refused as unavailable (nothing sent) after SERVER_SELECTION_TIMEOUT_MS.
OPERATION_TIMEOUT_MS = 10_000
SERVER_SELECTION_TIMEOUT_MS = 3_000

# Aggregation stages a client may send: they read this collection (or, for $lookup,
# $graphLookup and $unionWith, another one of this database, by a plain valid name). Not
# $out or $merge (they write anywhere), nor $changeStream, $collStats, $currentOp and the like.
_STAGES = frozenset({
    "$match", "$project", "$addFields", "$set", "$unset", "$group", "$sort", "$limit", "$skip",
    "$count", "$unwind", "$bucket", "$bucketAuto", "$facet", "$sortByCount", "$replaceRoot",
    "$replaceWith", "$sample", "$lookup", "$graphLookup", "$unionWith",
})
_FOREIGN = {"$lookup": "from", "$graphLookup": "from", "$unionWith": "coll"}
# Server-side JavaScript, refused anywhere in a request's arguments.
_CODE_OPERATORS = frozenset({"$where", "$function", "$accumulator"})


def _no_code(value: Any) -> None:
    """Refuse server-side JavaScript anywhere in `value`."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in _CODE_OPERATORS:
                raise DocOperationError(f"{key} (server-side JavaScript) is not allowed")
            _no_code(inner)
    elif isinstance(value, list):
        for inner in value:
            _no_code(inner)


def _check_pipeline(pipeline: Any) -> None:
    if not isinstance(pipeline, list):
        raise DocOperationError("an aggregation pipeline must be a list of stages")
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise DocOperationError("each pipeline stage must be a map with one key")
        ((name, spec),) = stage.items()
        if name not in _STAGES:
            raise DocOperationError(f"aggregation stage {name} is not allowed (allowed: "
                                    f"{', '.join(sorted(_STAGES))})")
        field = _FOREIGN.get(name)
        if field is not None:
            target = spec if name == "$unionWith" and isinstance(spec, str) else (
                spec.get(field) if isinstance(spec, dict) else None)
            if not isinstance(target, str) or not _COLLECTION_NAME.fullmatch(target):
                raise DocOperationError(f"{name} must name a collection of this database")
            if isinstance(spec, dict) and "pipeline" in spec:
                _check_pipeline(spec["pipeline"])
        if name == "$facet" and isinstance(spec, dict):
            for sub in spec.values():
                _check_pipeline(sub)


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
            config.uri, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS,
            connectTimeoutMS=SERVER_SELECTION_TIMEOUT_MS, socketTimeoutMS=OPERATION_TIMEOUT_MS,
            # An acknowledged write must survive a crash of the store: journaled before it is
            # acknowledged (j: true). With the default (w:1, no journal) a standalone store
            # acknowledges first, and `kill -9` lost 12 of 113 acknowledged documents (the
            # checker, tests/integration/test_reliability_nodes.py). Overrides the URI's.
            journal=True,
            tz_aware=True,
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
            "replace_one": self._replace_one,
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
        if not _COLLECTION_NAME.fullmatch(collection):
            raise DocOperationError(f"invalid collection name {collection!r}")
        handler = self._ops.get(op)
        if handler is None:
            known = ", ".join(sorted(self._ops))
            raise DocUnknownOperationError(f"unknown document operation {op!r} (known: {known})")
        _no_code(args)
        if op == "aggregate":
            _check_pipeline(args.get("pipeline"))
        try:
            return from_bson(await handler(self._db[collection], to_bson(args)))
        except DuplicateKeyError as exc:
            raise DuplicateDocumentError(str(exc.details or exc)) from exc
        except BulkWriteError as exc:
            errors = (exc.details or {}).get("writeErrors") or []
            if any(e.get("code") == 11000 for e in errors):
                raise DuplicateDocumentError(str(errors[0].get("errmsg", exc))) from exc
            raise DocOperationError(f"{op} failed: {exc}") from exc
        except ServerSelectionTimeoutError as exc:
            raise DocUnavailableError(f"document store unreachable: {exc}") from exc
        except (ExecutionTimeout, NetworkTimeout, WTimeoutError, AutoReconnect) as exc:
            raise DocTimeoutError(f"document store: {op} did not complete: {exc}") from exc
        except OperationFailure as exc:  # the store refused it: a bad operator, say
            raise DocOperationError(f"{op} refused by the document store: {exc}") from exc
        except (TypeError, ValueError, KeyError, OverflowError, InvalidDocument) as exc:
            raise DocOperationError(f"bad arguments for {op}: {exc}") from exc

    def set_validator(self, validator: Validator | None) -> None:
        """The documents' shapes anew (a reload whose regions changed: a new region's name
        becomes a valid `region` at once)."""
        self._validate = validator

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

    async def _replace_one(self, coll: Any, a: dict[str, Any]) -> Any:
        replacement = self._check(coll, a["replacement"])
        r = await coll.replace_one(a["filter"], replacement, upsert=bool(a.get("upsert")))
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
