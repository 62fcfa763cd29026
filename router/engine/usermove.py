"""Moving a user and everything that is theirs to another region's shard (README, "Moving a
user between regions"; the SQL is sql/010_user_moves.sql). Asked by the protocol's admin
request `move_user`, and so by `georoute user move`.

The rows move in one transaction over shards (router/engine/distributed.py, committed in two
phases): user_move_out reads and deletes them on the user's shard, user_move_in writes them
under ids minted on the new one, rekey_remote_enrollments keeps every course's record of
enrollments held elsewhere true, and the old -> new id of each moved row is written to
moved_ids, a reference table, on every shard. Then the preferences document is re-keyed.

Locks across shards: the move holds the user's rows on their shard while it writes on their
courses' shards and the new one, where a transaction of the same user (an enrollment) may
hold a course's row while it waits on the user's: a deadlock no single PostgreSQL sees. The
functions that write there wait on a lock for 2 s at most (sql/024), and the move then fails
as UserMoveBusy (retryable; nothing moved) instead of both waiting for the statement timeout.

A move that dies before its commit leaves nothing (its branches roll back, or the recovery
sweep settles them alike); one that dies after leaves the rows moved and perhaps the
document not: running it again finds the user already there (their id resolves, through
moved_ids, to an id of that region), moves nothing and finishes the document. So a second
run is harmless, and resumes what a first one left.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from protocol.messages import Hints
from router.backend.docstore import DocStore
from router.config import Config
from router.core.documents import USER_PREFERENCES
from router.core.errors import RoutingError, UnknownShardError
from router.core.routing import shard_of_value
from router.engine.branches import DistributedTransaction
from router.engine.distributed import DistributedTransactions
from router.engine.errors import UserMoveBusy
from router.engine.session import Session

__all__ = ["MoveReport", "UserMover", "move_request"]

_RESOLVE = "SELECT resolve_moved_id($1)"
_MOVE_OUT = "SELECT user_move_out($1, $2)::text"
_MOVE_IN = "SELECT user_move_in($1, $2::jsonb)::text"
_REKEY = "SELECT rekey_remote_enrollments($1, $2::jsonb)"
_FORWARD = (
    "INSERT INTO moved_ids (old_id, new_id, kind, moved_at) "
    "SELECT (m ->> 'old_id')::uuid, (m ->> 'new_id')::uuid, m ->> 'kind', $2::timestamptz "
    "FROM jsonb_array_elements($1::jsonb) AS m"
)
# A move that found the user's rows gone (P0002) while their id still named their old shard
# met a move committed meanwhile (its branch there was being committed): it asks again.
_ATTEMPTS = 3
# Every id the user has had: those whose chain of moves ends at theirs now.
_FORMER_IDS = ("SELECT old_id FROM moved_ids WHERE kind = 'users' "
               "AND resolve_moved_id(old_id) = $1 ORDER BY moved_at, old_id")


@dataclass(slots=True)
class MoveReport:
    """What a move did. `moved` is False when the user already lived in `region` (a second
    run); `rows` counts the rows moved per table; `documents` the documents re-keyed."""

    user_id: uuid.UUID  # as asked
    current_id: uuid.UUID  # their id now, in `region`
    region: str
    from_region: str | None
    moved: bool
    rows: dict[str, int] = field(default_factory=dict)
    documents: int = 0

    def as_wire(self) -> dict[str, Any]:
        return {"user_id": str(self.user_id), "current_id": str(self.current_id),
                "region": self.region, "from_region": self.from_region, "moved": self.moved,
                "rows": dict(self.rows), "documents": self.documents}


class UserMover:
    """Carries moves out through the engine's transactions over shards and the document
    store; one per request (it holds the session its transactions belong to)."""

    def __init__(self, config: Config, distributed: DistributedTransactions,
                 docstore: DocStore) -> None:
        self._config = config
        self._distributed = distributed
        self._docstore = docstore
        self._session = Session(client_name="user-move")
        self._tried: uuid.UUID | None = None  # the id the last attempt moved out

    async def move(self, user_id: uuid.UUID, region: str) -> MoveReport:
        if region not in self._config.shards:
            raise UnknownShardError(f"no shard {region!r} (router.toml's [shards.*]: "
                                    f"{', '.join(self._config.shards)})", region)
        for attempt in range(_ATTEMPTS):
            try:
                report = await self._move_rows(user_id, region)
                break
            except asyncpg.LockNotAvailableError as exc:  # sql/024's lock_timeout
                raise UserMoveBusy(str(user_id), exc) from exc
            except asyncpg.PostgresError as exc:
                if (exc.sqlstate != "P0002" or attempt == _ATTEMPTS - 1
                        or await self._resolve(user_id) == self._tried):
                    raise
        report.documents = await self._move_documents(report.current_id, region)
        return report

    # ---- the rows: one transaction over shards --------------------------------------------

    async def _move_rows(self, user_id: uuid.UUID, region: str) -> MoveReport:
        tx = self._distributed.begin(self._session, "BEGIN", read_only=False)
        try:
            current = await self._value(tx, _RESOLVE, [user_id])
            home = shard_of_value(current, self._config, regions=False)
            if home is None:
                raise UnknownShardError(f"{user_id} is not a georoute id: it names no shard",
                                        str(user_id))
            if home == region:  # there already: a second run, or nothing to do
                await self._distributed.rollback(self._session, tx)
                return MoveReport(user_id, current, region, None, moved=False)
            self._tried = current
            data = await self._value(tx, _MOVE_OUT, [current, region])
            result = json.loads(await self._value(tx, _MOVE_IN, [region, data]))
            seats = result["seats"]
            for shard in self._course_shards(seats):
                await self._value(tx, _REKEY, [shard, json.dumps(seats)])
            moved = result["moved"]
            await self._run(tx, _FORWARD, [json.dumps(moved), dt.datetime.now(dt.UTC)])
            await self._distributed.commit(self._session, tx)
        except BaseException:
            if not tx.closed:
                await self._distributed.rollback(self._session, tx)
            raise
        rows: dict[str, int] = {}
        for entry in moved:
            rows[entry["kind"]] = rows.get(entry["kind"], 0) + 1
        return MoveReport(user_id, uuid.UUID(result["user_id"]), region, home, moved=True,
                          rows=rows)

    def _course_shards(self, seats: Sequence[dict[str, Any]]) -> list[str]:
        """The shards of the courses the user is enrolled in, in config order."""
        named = {shard_of_value(uuid.UUID(s["course_id"]), self._config, regions=False)
                 for s in seats}
        if None in named:
            raise RoutingError("an enrollment's course id names no configured shard")
        return [s for s in self._config.shards if s in named]

    async def _run(self, tx: DistributedTransaction, sql: str, params: list[Any]) -> list[Any]:
        outcome = await self._distributed.statements(self._session, tx, [(sql, params)],
                                                     Hints())
        return list(outcome.rows)

    async def _value(self, tx: DistributedTransaction, sql: str, params: list[Any]) -> Any:
        rows = await self._run(tx, sql, params)
        return rows[0][0] if rows else None

    # ---- the preferences document ----------------------------------------------------------

    async def _read(self, sql: str, params: list[Any]) -> list[Any]:
        """A read of moved_ids (a reference table: any shard has it) in a transaction of its
        own."""
        tx = self._distributed.begin(self._session, "BEGIN", read_only=True)
        try:
            return await self._run(tx, sql, params)
        finally:
            await self._distributed.rollback(self._session, tx)

    async def _resolve(self, user_id: uuid.UUID) -> uuid.UUID:
        resolved: uuid.UUID = (await self._read(_RESOLVE, [user_id]))[0][0]
        return resolved

    async def _former_ids(self, current: uuid.UUID) -> list[uuid.UUID]:
        return [row[0] for row in await self._read(_FORMER_IDS, [current])]

    async def _move_documents(self, current: uuid.UUID, region: str) -> int:
        """Re-key the preferences document of any former id to `current` (and `region`).
        A document already under `current` is newer than any left behind: it is kept."""
        moved = 0
        for former in await self._former_ids(current):
            doc = await self._docs("find_one", {"filter": {"_id": str(former)}})
            if doc is None:
                continue
            if await self._docs("find_one", {"filter": {"_id": str(current)}}) is None:
                doc.update({"_id": str(current), "user_id": str(current), "region": region})
                await self._docs("replace_one", {"filter": {"_id": str(current)},
                                                 "replacement": doc, "upsert": True})
            await self._docs("delete_one", {"filter": {"_id": str(former)}})
            moved += 1
        return moved

    async def _docs(self, op: str, args: dict[str, Any]) -> Any:
        return await self._docstore.run(USER_PREFERENCES, op, args)


async def move_request(config: Config, distributed: DistributedTransactions,
                       docstore: DocStore, args: dict[str, Any]) -> dict[str, Any]:
    """The admin request `move_user` {"user_id", "region"}: its reply payload."""
    raw_id, region = args.get("user_id"), args.get("region")
    try:
        user_id = raw_id if isinstance(raw_id, uuid.UUID) else uuid.UUID(str(raw_id))
    except ValueError:
        raise RoutingError(f"move_user: user_id {raw_id!r} is not a uuid") from None
    if not isinstance(region, str):
        raise RoutingError("move_user: region (a shard's name) is required")
    mover = UserMover(config, distributed, docstore)
    return (await mover.move(user_id, region)).as_wire()
