"""`georoute health`: every node's role, reachability and replication lag, each shard's schema
version and row counts, and the document store's ping, as a table or JSON."""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from router.backend.wal import PRIMARY_POSITION_SQL, REPLAY_POSITION
from router.config import Config, NodeAddress
from router.tools.db.connect import connect_node
from router.tools.db.documents import DocumentStore

__all__ = [
    "COUNTED_TABLES",
    "DocumentStoreHealth",
    "HealthReport",
    "NodeHealth",
    "NodeRole",
    "NodeState",
    "ShardHealth",
    "check_health",
]

# The main tables whose row counts `georoute health` shows per shard.
COUNTED_TABLES: tuple[str, ...] = (
    "users", "courses", "lessons", "enrollments", "lesson_progress", "payments", "invoices",
    "reviews", "certificates", "audit_log",
)


class NodeRole(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"
    UNKNOWN = "unknown"


class NodeState(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class NodeHealth:
    name: str
    shard: str
    address: str
    expected_role: NodeRole
    role: NodeRole = NodeRole.UNKNOWN
    state: NodeState = NodeState.DOWN
    replica_lag_bytes: int | None = None      # primary's WAL position minus replica's replay
    # Seconds since the replica replayed its last transaction: grows while the primary is idle,
    # so read it beside replica_lag_bytes (0 bytes behind + large delay = idle, not lagging).
    replay_delay_seconds: float | None = None
    error: str | None = None


@dataclass(slots=True)
class ShardHealth:
    shard: str
    number: int
    schema_version: int | None = None
    row_counts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class DocumentStoreHealth:
    uri: str
    ok: bool = False
    latency_ms: float | None = None
    error: str | None = None


@dataclass(slots=True)
class HealthReport:
    nodes: list[NodeHealth]
    shards: list[ShardHealth]
    document_store: DocumentStoreHealth

    @property
    def healthy(self) -> bool:
        return self.document_store.ok and all(
            n.state is NodeState.UP and n.role is n.expected_role for n in self.nodes
        )

    def as_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if isinstance(obj, enum.Enum):
                return obj.value
            if isinstance(obj, dict):
                return {k: plain(v) for k, v in obj.items()}
            if isinstance(obj, list):
                return [plain(v) for v in obj]
            return obj

        return {
            "healthy": self.healthy,
            "nodes": [plain(asdict(n)) for n in self.nodes],
            "shards": [plain(asdict(s)) for s in self.shards],
            "document_store": asdict(self.document_store),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def format_table(self) -> str:
        out = [_table(
            ("NODE", "ADDRESS", "ROLE", "STATE", "LAG_BYTES", "REPLAY_DELAY_S", "ERROR"),
            [(n.name, n.address, n.role.value, n.state.value,
              _dash(n.replica_lag_bytes),
              _dash(None if n.replay_delay_seconds is None else f"{n.replay_delay_seconds:.3f}"),
              n.error or "") for n in self.nodes],
        )]
        shard_names = [s.shard for s in self.shards]
        rows: list[tuple[str, ...]] = [
            ("schema_version", *(_dash(s.schema_version) for s in self.shards))]
        for table in COUNTED_TABLES:
            rows.append((table, *(_dash(s.row_counts.get(table)) for s in self.shards)))
        out.append(_table(("ROWS", *shard_names), rows))
        d = self.document_store
        status = f"ok ({d.latency_ms:.1f} ms)" if d.ok and d.latency_ms is not None else (
            f"DOWN: {d.error}")
        out.append(f"document store {d.uri}: {status}")
        out.append("overall: " + ("healthy" if self.healthy else "UNHEALTHY"))
        return "\n\n".join(out)


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    )


def _redact(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri)


async def _probe_node(config: Config, node: NodeHealth, address: NodeAddress,
                      primary_lsn: int | None) -> None:
    try:
        conn = await connect_node(config, address)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        node.error = f"{type(exc).__name__}: {exc}"[:120]
        return
    try:
        in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
        node.state = NodeState.UP
        node.role = NodeRole.REPLICA if in_recovery else NodeRole.PRIMARY
        if in_recovery:
            row: Any = await conn.fetchrow(
                f"SELECT {REPLAY_POSITION} AS replayed, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS delay"
            )
            replayed = row["replayed"]
            node.replica_lag_bytes = (None if primary_lsn is None or replayed is None
                                      else max(0, primary_lsn - replayed))  # fmt: skip
            node.replay_delay_seconds = None if row["delay"] is None else float(row["delay"])
    except asyncpg.PostgresError as exc:
        node.error = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        await conn.close()


async def _probe_shard(config: Config, shard_name: str, nodes: list[NodeHealth]) -> ShardHealth:
    shard = config.shards[shard_name]
    report = ShardHealth(shard=shard_name, number=shard.number)
    primary_lsn: int | None = None
    primary = nodes[0]
    try:
        conn = await connect_node(config, shard.primary)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        primary.error = f"{type(exc).__name__}: {exc}"[:120]
    else:
        try:
            primary.state = NodeState.UP
            in_recovery = await conn.fetchval("SELECT pg_is_in_recovery()")
            primary.role = NodeRole.REPLICA if in_recovery else NodeRole.PRIMARY
            if not in_recovery:
                primary_lsn = await conn.fetchval(PRIMARY_POSITION_SQL)
            if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
                report.schema_version = await conn.fetchval(
                    "SELECT coalesce(max(version), 0) FROM schema_migrations")
            for table in COUNTED_TABLES:
                if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
                    report.row_counts[table] = int(
                        await conn.fetchval(f"SELECT count(*) FROM {table}"))
        except asyncpg.PostgresError as exc:
            primary.error = f"{type(exc).__name__}: {exc}"[:120]
        finally:
            await conn.close()
    await asyncio.gather(*(
        _probe_node(config, node, replica, primary_lsn)
        for node, replica in zip(nodes[1:], shard.replicas, strict=True)
    ))
    return report


async def _probe_documents(config: Config) -> DocumentStoreHealth:
    health = DocumentStoreHealth(uri=_redact(config.document_store.uri))
    started = time.monotonic()
    try:
        async with DocumentStore(config, timeout_ms=2000) as store:
            await store.ping()
    except Exception as exc:  # any driver failure means "down"; the message says which
        health.error = f"{type(exc).__name__}: {exc}"[:160]
        return health
    health.ok = True
    health.latency_ms = (time.monotonic() - started) * 1000
    return health


async def check_health(config: Config) -> HealthReport:
    nodes_by_shard: dict[str, list[NodeHealth]] = {}
    for shard_name, node_name, address in config.all_nodes():
        expected = NodeRole.PRIMARY if node_name.endswith("-primary") else NodeRole.REPLICA
        nodes_by_shard.setdefault(shard_name, []).append(
            NodeHealth(node_name, shard_name, address.label, expected))
    shards, docs = await asyncio.gather(
        asyncio.gather(*(_probe_shard(config, s, n) for s, n in nodes_by_shard.items())),
        _probe_documents(config),
    )
    nodes = [n for group in nodes_by_shard.values() for n in group]
    return HealthReport(nodes=nodes, shards=list(shards), document_store=docs)
