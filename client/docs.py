"""Document-store calls: `client.docs("course_content").find_one({...})`. Each call is one Doc
request; reads retry like SQL reads, writes only with an idempotency_key."""

# A per-request `timeout=` (not an asyncio.timeout around the call) because it is also sent to
# the router as timeout_ms and bounds all retries together.
# ruff: noqa: ASYNC109

from __future__ import annotations

from typing import Any

from client.replies import doc_result_of
from client.sender import Sender
from protocol import Consistency, Doc
from protocol.requests import DOC_READ_OPS

__all__ = ["READ_OPS", "Collection"]

READ_OPS = DOC_READ_OPS


def _args(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class Collection:
    def __init__(
        self, sender: Sender, name: str, *, shard: str | None = None, shard_key: Any = None
    ) -> None:
        self._sender = sender
        self.name = name
        self._shard = shard
        self._shard_key = shard_key

    async def command(
        self,
        op: str,
        args: dict[str, Any],
        *,
        consistency: Consistency | str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Any document-store operation; see PROTOCOL.md for ops and their args."""
        hints = self._sender.hints(
            self._shard, self._shard_key, consistency, idempotency_key, timeout
        )
        if idempotent is None:  # (the router refuses idempotency keys on document writes)
            idempotent = op in READ_OPS
        reply = await self._sender.call(Doc(0, self.name, op, args, hints), idempotent, timeout)
        return doc_result_of(reply)

    # -- reads

    async def find(
        self,
        filter: dict[str, Any] | None = None,
        *,
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        limit: int | None = None,
        skip: int | None = None,
        **options: Any,
    ) -> list[dict[str, Any]]:
        sort_wire = None if sort is None else [[k, d] for k, d in sort]
        args = _args(
            filter=filter or {}, projection=projection, sort=sort_wire, limit=limit, skip=skip
        )
        result = await self.command("find", args, **options)
        return list(result or [])

    async def find_one(
        self,
        filter: dict[str, Any] | None = None,
        *,
        projection: dict[str, Any] | None = None,
        sort: list[tuple[str, int]] | None = None,
        **options: Any,
    ) -> dict[str, Any] | None:
        sort_wire = None if sort is None else [[k, d] for k, d in sort]
        args = _args(filter=filter or {}, projection=projection, sort=sort_wire)
        result = await self.command("find_one", args, **options)
        return result if isinstance(result, dict) else None

    async def count(self, filter: dict[str, Any] | None = None, **options: Any) -> int:
        return int(await self.command("count", _args(filter=filter or {}), **options))

    async def aggregate(self, pipeline: list[dict[str, Any]], **options: Any) -> list[Any]:
        return list(await self.command("aggregate", {"pipeline": pipeline}, **options) or [])

    async def distinct(
        self, key: str, filter: dict[str, Any] | None = None, **options: Any
    ) -> list[Any]:
        args = _args(key=key, filter=filter or {})
        return list(await self.command("distinct", args, **options) or [])

    # -- writes (retried only with idempotency_key=...)

    async def insert_one(self, document: dict[str, Any], **options: Any) -> dict[str, Any]:
        return dict(await self.command("insert_one", {"document": document}, **options))

    async def insert_many(
        self, documents: list[dict[str, Any]], *, ordered: bool = True, **options: Any
    ) -> dict[str, Any]:
        args = {"documents": documents, "ordered": ordered}
        return dict(await self.command("insert_many", args, **options))

    async def update_one(
        self,
        filter: dict[str, Any],
        update: dict[str, Any] | list[Any],
        *,
        upsert: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        args = {"filter": filter, "update": update, "upsert": upsert}
        return dict(await self.command("update_one", args, **options))

    async def update_many(
        self,
        filter: dict[str, Any],
        update: dict[str, Any] | list[Any],
        *,
        upsert: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        args = {"filter": filter, "update": update, "upsert": upsert}
        return dict(await self.command("update_many", args, **options))

    async def replace_one(
        self,
        filter: dict[str, Any],
        replacement: dict[str, Any],
        *,
        upsert: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        args = {"filter": filter, "replacement": replacement, "upsert": upsert}
        return dict(await self.command("replace_one", args, **options))

    async def delete_one(self, filter: dict[str, Any], **options: Any) -> dict[str, Any]:
        return dict(await self.command("delete_one", {"filter": filter}, **options))

    async def delete_many(self, filter: dict[str, Any], **options: Any) -> dict[str, Any]:
        return dict(await self.command("delete_many", {"filter": filter}, **options))
