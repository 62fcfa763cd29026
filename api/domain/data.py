"""The domain's one door to data: the client library, with its errors translated. Reads may
be retried by the client; writes (schema functions called with SELECT) never are, unless
they carry an idempotency key. `transaction()` spans the shards its statements name, and
commits on all of them or none (two-phase commit in the router)."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import client
from api.domain.failures import mapped
from api.errors import InvalidInput

__all__ = ["Data", "TxData", "decode_cursor", "encode_cursor"]


class Data:
    def __init__(self, db: client.Client) -> None:
        self.db = db

    async def rows(self, sql: str, *args: Any, **hints: Any) -> list[dict[str, Any]]:
        with mapped():
            return [r.as_dict() for r in await self.db.fetch(sql, *args, **hints)]

    async def row(self, sql: str, *args: Any, **hints: Any) -> dict[str, Any] | None:
        found = await self.rows(sql, *args, **hints)
        return found[0] if found else None

    async def write(self, sql: str, *args: Any, idempotency_key: str | None = None,
                    **hints: Any) -> list[dict[str, Any]]:
        """A statement that changes data, sent once (or retried under its idempotency key)."""
        with mapped():
            found = await self.db.fetch(sql, *args, idempotent=False,
                                        idempotency_key=idempotency_key, **hints)
        return [r.as_dict() for r in found]

    async def rows_by_id(self, sql: str, *args: Any, **hints: Any) -> list[dict[str, Any]]:
        """`rows` of a read that the router routes by a row's id (a key, a sharded
        function's id argument or a `shard_key` hint), or none when that id names no shard (a
        uuid that is no georoute id, or one of no shard here: MISSING_SHARD_KEY or
        UNKNOWN_SHARD). No row has such an id."""
        with mapped():
            try:
                found = await self.db.fetch(sql, *args, **hints)
            except (client.MissingShardKeyError, client.UnknownShardError):
                return []
        return [r.as_dict() for r in found]

    async def row_by_id(self, sql: str, *args: Any, **hints: Any) -> dict[str, Any] | None:
        """The first row of `rows_by_id`, or None."""
        found = await self.rows_by_id(sql, *args, **hints)
        return found[0] if found else None

    async def write_by_id(self, sql: str, *args: Any) -> list[dict[str, Any]] | None:
        """`write` of a statement that the router routes by a row's id alone (a sharded
        function's id argument), or None when that id names no shard, as in `rows_by_id`."""
        with mapped():
            try:
                found = await self.db.fetch(sql, *args, idempotent=False)
            except (client.MissingShardKeyError, client.UnknownShardError):
                return None
        return [r.as_dict() for r in found]

    async def write_value(self, sql: str, *args: Any, **hints: Any) -> Any:
        found = await self.write(sql, *args, **hints)
        return next(iter(found[0].values())) if found else None

    def docs(self, collection: str) -> client.Collection:
        return self.db.docs(collection)

    async def resolve(self, row_id: Any) -> Any:
        """Where an id lives now: the id itself, or, for a row that moved with its user to
        another region (README, "Moving a user between regions"), its id there."""
        found = await self.row("SELECT resolve_moved_id($1) AS id", row_id)
        return row_id if found is None else found["id"]

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[TxData]:
        """A transaction begun without a shard: each statement goes to the shard its keys
        name; committed on every shard it wrote, or rolled back on all (an exception inside
        rolls it back). Its statements are never retried."""
        with mapped():
            async with self.db.transaction() as tx:
                yield TxData(tx)


class TxData:
    """Statements inside a Data.transaction()."""

    def __init__(self, tx: client.Transaction) -> None:
        self._tx = tx

    async def rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with mapped():
            return [r.as_dict() for r in await self._tx.fetch(sql, *args)]

    async def row(self, sql: str, *args: Any) -> dict[str, Any] | None:
        found = await self.rows(sql, *args)
        return found[0] if found else None

    async def value(self, sql: str, *args: Any) -> Any:
        found = await self.rows(sql, *args)
        return next(iter(found[0].values())) if found else None


def encode_cursor(values: list[Any]) -> str:
    """An opaque page cursor: the last row's sort values, as URL-safe base64 JSON."""
    raw = json.dumps(values, separators=(",", ":"), default=str).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, length: int) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (ValueError, TypeError):
        raise InvalidInput("malformed cursor") from None
    if not isinstance(values, list) or len(values) != length:
        raise InvalidInput("malformed cursor")
    return values
