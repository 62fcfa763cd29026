"""`georoute health`: every node's role, reachability and replication lag, each shard's schema
version and row counts, whether the reference tables' copies agree (reference_health.py), and
the document store's ping, as a table or JSON. (The router's own node health, a state machine,
is router/core/health.py.)"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg

from router.backend.wal import PRIMARY_POSITION_SQL, REPLAY_POSITION, TIMELINE_SQL
from router.config import Config, NodeAddress
from router.core.primary import NodeSays, choose_primary
from router.tools.db.connect import connect_node
from router.tools.db.documents import DocumentStore
from router.tools.db.reference_health import ReferenceReport, check_reference_tables
from router.types import Role

__all__ = [
    "COUNTED_TABLES",
    "DocumentStoreHealth",
    "HealthReport",
    "NodeReport",
    "Reachability",
    "ShardHealth",
    "check_health",
]

# The main tables whose row counts `georoute health` shows per shard.
IDENTITY_SQL = f"SELECT pg_is_in_recovery(), {TIMELINE_SQL}"
UPSTREAM_SQL = ("SELECT sender_host, sender_port FROM pg_stat_wal_receiver "
                "WHERE status = 'streaming' AND sender_host IS NOT NULL")
COUNTED_TABLES: tuple[str, ...] = (
    "users", "courses", "lessons", "enrollments", "lesson_progress", "payments", "invoices",
    "reviews", "certificates", "audit_log",
)


class Reachability(enum.Enum):
    UP = "up"
    DOWN = "down"


@dataclass(slots=True)
class NodeReport:
    name: str
    shard: str
    address: str
    expected_role: Role  # router.toml's: its shard's `primary` entry, or one of its replicas
    role: Role | None = None  # what it says of itself (pg_is_in_recovery); None: unknown
    state: Reachability = Reachability.DOWN
    timeline: int | None = None  # a writable node's timeline
    # Writable, but not its shard's agreed primary (the writable node on the newest timeline,
    # router/core/primary.py): an old primary back after a failover. Routers in managed mode
    # send it nothing; `georoute cluster rejoin` makes it a standby.
    fenced: bool = False
    replica_lag_bytes: int | None = None      # primary's WAL position minus replica's replay
    # Seconds since the replica replayed its last transaction: grows while the primary is idle,
    # so read it beside replica_lag_bytes (0 bytes behind + large delay = idle, not lagging).
    replay_delay_seconds: float | None = None
    # A standby's WAL receiver: "host:port" it streams from, "" when it streams from nowhere
    # (e.g. it still asks a dead old primary: managed failover re-points it), None: no answer.
    upstream: str | None = None
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
    nodes: list[NodeReport]
    shards: list[ShardHealth]
    document_store: DocumentStoreHealth
    reference: ReferenceReport = field(default_factory=lambda: ReferenceReport([]))

    @property
    def healthy(self) -> bool:
        return self.document_store.ok and all(
            n.state is Reachability.UP and n.role is n.expected_role and not n.fenced
            for n in self.nodes
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
            "nodes": [plain(asdict(n)) | {"role": _role(n.role)} for n in self.nodes],
            "shards": [plain(asdict(s)) for s in self.shards],
            "document_store": asdict(self.document_store),
            "reference_tables": self.reference.as_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def format_table(self) -> str:
        out = [_table(
            ("NODE", "ADDRESS", "ROLE", "STATE", "LAG_BYTES", "REPLAY_DELAY_S", "UPSTREAM",
             "ERROR"),
            [(n.name, n.address, _role(n.role) + (" FENCED" if n.fenced else ""), n.state.value,
              _dash(n.replica_lag_bytes),
              _dash(None if n.replay_delay_seconds is None else f"{n.replay_delay_seconds:.3f}"),
              "NOT STREAMING" if n.upstream == "" else _dash(n.upstream),
              n.error or "") for n in self.nodes],
        )]
        shard_names = [s.shard for s in self.shards]
        rows: list[tuple[str, ...]] = [
            ("schema_version", *(_dash(s.schema_version) for s in self.shards))]
        for table in COUNTED_TABLES:
            rows.append((table, *(_dash(s.row_counts.get(table)) for s in self.shards)))
        out.append(_table(("ROWS", *shard_names), rows))
        ref = self.reference
        if ref.tables:
            out.append(_table(("REFERENCE TABLE", *shard_names, "AGREE"), ref.rows(shard_names)))
        for shard, error in ref.errors.items():
            out.append(f"reference tables on {shard}: not read: {error}")
        if ref.differing:
            out.append("reference tables whose copies DIFFER between shards: "
                       + ", ".join(ref.differing))
        d = self.document_store
        status = f"ok ({d.latency_ms:.1f} ms)" if d.ok and d.latency_ms is not None else (
            f"DOWN: {d.error}")
        out.append(f"document store {d.uri}: {status}")
        out.append("overall: " + ("healthy" if self.healthy else "UNHEALTHY"))
        return "\n\n".join(out)


def _role(role: Role | None) -> str:
    return "unknown" if role is None else role.value


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


async def _probe_node(config: Config, node: NodeReport, address: NodeAddress,
                      primary_lsn: int | None) -> None:
    try:
        conn = await connect_node(config, address)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        node.error = f"{type(exc).__name__}: {exc}"[:120]
        return
    try:
        identity: Any = await conn.fetchrow(IDENTITY_SQL)
        in_recovery, node.timeline = identity
        node.state = Reachability.UP
        node.role = Role.REPLICA if in_recovery else Role.PRIMARY
        if in_recovery:
            row: Any = await conn.fetchrow(
                f"SELECT {REPLAY_POSITION} AS replayed, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp()) AS delay"
            )
            replayed = row["replayed"]
            node.replica_lag_bytes = (None if primary_lsn is None or replayed is None
                                      else max(0, primary_lsn - replayed))
            node.replay_delay_seconds = None if row["delay"] is None else float(row["delay"])
            sender: Any = await conn.fetchrow(UPSTREAM_SQL)
            node.upstream = "" if sender is None else f"{sender[0]}:{sender[1]}"
    except asyncpg.PostgresError as exc:
        node.error = f"{type(exc).__name__}: {exc}"[:120]
    finally:
        await conn.close()


async def _probe_shard(config: Config, shard_name: str, nodes: list[NodeReport]) -> ShardHealth:
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
            primary.state = Reachability.UP
            identity: Any = await conn.fetchrow(IDENTITY_SQL)
            in_recovery, primary.timeline = identity
            primary.role = Role.REPLICA if in_recovery else Role.PRIMARY
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
    said = [NodeSays(n.name, None if n.role is None else n.role is Role.REPLICA, n.timeline)
            for n in nodes]
    fenced = choose_primary(primary.name, said).fenced
    for node in nodes:
        node.fenced = node.name in fenced
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
    nodes_by_shard: dict[str, list[NodeReport]] = {}
    for shard_name, node_name, address in config.all_nodes():
        # Each shard's `primary` entry comes first: router.toml expects it to be the primary.
        expected = Role.REPLICA if shard_name in nodes_by_shard else Role.PRIMARY
        nodes_by_shard.setdefault(shard_name, []).append(
            NodeReport(node_name, shard_name, address.label, expected))
    shards, docs, reference = await asyncio.gather(
        asyncio.gather(*(_probe_shard(config, s, n) for s, n in nodes_by_shard.items())),
        _probe_documents(config),
        check_reference_tables(config),
    )
    nodes = [n for group in nodes_by_shard.values() for n in group]
    return HealthReport(nodes=nodes, shards=list(shards), document_store=docs,
                        reference=reference)
