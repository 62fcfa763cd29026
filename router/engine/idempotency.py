"""Idempotency keys: claimed with the request's fingerprint in the keyed write's own
transaction, answered from the stored reply on a retry, refused for any other request, and
forgotten once no client retry can still carry them.

Keyed writes record their key in `georoute_idempotency` on the primary of the shard they run
on (executor.py), so a key is scoped to that shard. Without a sweep the table only grows;
`sweep_once` deletes keys older than the configured retention on every reachable primary, and
`run_sweeper` repeats that in the background.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgpack

from protocol.values import ext_default, ext_hook
from router.backend.pool import Backend, NodeUnavailableError, PoolTimeoutError
from router.backend.wirevalues import Columns
from router.clock import SYSTEM_CLOCK, Clock
from router.engine.errors import IdempotencyKeyReused
from router.ha.topology import Topology

__all__ = [
    "IdempotencyKeyReused",
    "Stored",
    "claim",
    "fingerprint",
    "pack_reply",
    "run_sweeper",
    "store",
    "sweep_interval",
    "sweep_once",
]

log = logging.getLogger("georoute.idempotency")

CLAIM_SQL = (
    "INSERT INTO georoute_idempotency (idem_key, fingerprint) VALUES ($1, $2) "
    "ON CONFLICT DO NOTHING RETURNING 1"
)
STORE_SQL = "UPDATE georoute_idempotency SET status = $2, reply = $3 WHERE idem_key = $1"
FETCH_SQL = "SELECT status, reply, fingerprint FROM georoute_idempotency WHERE idem_key = $1"
# Bumped whenever what goes into a fingerprint changes, so old and new ones never collide.
_FINGERPRINT_VERSION = 1
NO_ROWS = msgpack.packb([[], []])  # the stored reply of a keyed batch: its status says it all


def fingerprint(kind: str, shard: str, statements: Sequence[tuple[str, Sequence[Any]]]) -> bytes:
    """What decides a keyed request's outcome: the kind of request ("query" or "batch"), the
    shard it runs on, and each statement's text and parameters, in order. Parameters are
    hashed in their wire form, so equal requests always give equal fingerprints."""
    body = [_FINGERPRINT_VERSION, kind, shard, [[sql, list(params)] for sql, params in statements]]
    packed = msgpack.packb(body, default=ext_default, use_bin_type=True)
    return hashlib.sha256(packed).digest()


@dataclass(frozen=True, slots=True)
class Stored:
    """What an earlier request under the key left: its status and reply (None when the reply
    could not be kept: the write applied, but its result cannot be sent)."""

    status: str
    reply: bytes | None


async def claim(backend: Backend, key: str, shard: str, request: bytes) -> Stored | None:
    """Claim `key` for the request fingerprinted `request`, inside the caller's transaction.
    None: claimed, run the request. Else what the earlier request under this key stored; a
    concurrent first attempt is waited for (its row lock) until it commits or rolls back.
    Raises IdempotencyKeyReused when that was another request."""
    _, claimed, _ = await backend.run(CLAIM_SQL, [key, request])
    if claimed:
        return None
    _, found, _ = await backend.run(FETCH_SQL, [key])
    status, reply, earlier = found[0]
    # Keys claimed before fingerprints were kept (migration 006) have none: replayed as then.
    if earlier is not None and bytes(earlier) != request:
        raise IdempotencyKeyReused(key, shard)
    return Stored(status, None if reply is None else bytes(reply))


async def store(backend: Backend, key: str, status: str, reply: bytes | None) -> None:
    await backend.run(STORE_SQL, [key, status, reply])


def unpack_reply(reply: bytes) -> tuple[list[str], list[Any]]:
    """The columns (with their wire types, when stored) and rows `pack_reply` stored; replies
    stored before the types were kept have none."""
    stored = msgpack.unpackb(reply, ext_hook=ext_hook, raw=False)
    names, rows = stored[0], stored[1]
    types = stored[2] if len(stored) > 2 else None
    return (Columns(names, types) if types is not None else names), rows


def pack_reply(columns: list[str], rows: list[Any], max_bytes: int) -> bytes | None:
    """The columns and rows to store for a retry, or None when they can never be sent (a
    value with no wire form, or more than a frame holds): the write still applies, and its
    reply, and every retry's, says so with its status."""
    types = getattr(columns, "types", None)  # kept, so a retry's reply has them too
    try:
        packed: bytes = msgpack.packb([list(columns), rows, types], default=ext_default,
                                      use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return packed if len(packed) <= max_bytes else None


SWEEP_SQL = (
    "DELETE FROM georoute_idempotency WHERE created_at < now() - make_interval(secs => $1)"
)


async def sweep_once(topology: Topology, retention_seconds: float) -> dict[str, int]:
    """Delete expired keys on every reachable primary; returns {shard: keys deleted}."""
    deleted: dict[str, int] = {}
    for shard in topology.shards.values():
        node = shard.primary
        if not node.available:
            continue
        try:
            backend = await node.pool.acquire()
        except (NodeUnavailableError, PoolTimeoutError):
            continue
        try:
            _, _, status = await backend.run(SWEEP_SQL, [float(retention_seconds)])
        except asyncpg.UndefinedTableError:
            node.pool.release(backend)  # not migrated yet: nothing to forget
            continue
        except asyncpg.PostgresError as exc:
            node.pool.release(backend)
            log.warning("idempotency sweep on %s failed: %s", node.name, exc)
            continue
        except BaseException:
            node.pool.release(backend, broken=True)
            raise
        node.pool.release(backend)
        deleted[shard.name] = int(status.rsplit(" ", 1)[-1])
    return deleted


def sweep_interval(retention_seconds: float) -> float:
    """A 24th of the retention, between 1 second and 10 minutes."""
    return min(600.0, max(1.0, retention_seconds / 24))


async def run_sweeper(current: Callable[[], Topology], retention_seconds: float,
                      clock: Clock = SYSTEM_CLOCK) -> None:
    """Sweep every `sweep_interval`, on whatever topology is current (a SIGHUP reload
    replaces it); the interval sleeps on `clock`."""
    interval = sweep_interval(retention_seconds)
    while True:
        await clock.sleep(interval)
        try:
            deleted = await sweep_once(current(), retention_seconds)
        except Exception:  # the sweeper must never die
            log.exception("idempotency sweep failed")
            continue
        if any(deleted.values()):
            log.info("forgot expired idempotency keys: %s", deleted)
