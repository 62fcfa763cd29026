"""What `georoute cluster status` reports about each node, and how it is printed."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from router.types import Role

__all__ = ["NodeStatus", "ProcessState", "format_table", "to_json"]


class ProcessState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    shard: str | None  # None for the document store
    # What a PostgreSQL node says of itself (pg_is_in_recovery()); None when it cannot be
    # asked (stopped, or not answering) and for the document store, which has no role.
    role: Role | None
    port: int
    pid: int | None
    state: ProcessState
    replication_state: str | None = None  # replicas: pg_stat_replication.state on the primary
    replica_lag_bytes: int | None = None  # replicas: primary's WAL position minus replay position

    @property
    def running(self) -> bool:
        return self.state is ProcessState.RUNNING

    @property
    def role_label(self) -> str:
        """The role as printed: `docstore` for the document store, `unknown` for a node that
        could not be asked."""
        if self.shard is None:
            return "docstore"
        return "unknown" if self.role is None else self.role.value

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["role"] = self.role_label
        out["state"] = self.state.value
        return out


def to_json(statuses: Sequence[NodeStatus]) -> str:
    return json.dumps([s.as_dict() for s in statuses], indent=2)


def format_table(statuses: Sequence[NodeStatus]) -> str:
    header = ("NODE", "ROLE", "PORT", "PID", "STATE", "REPLICATION", "LAG_BYTES")
    rows = [header] + [
        (
            s.name,
            s.role_label,
            str(s.port),
            str(s.pid) if s.pid else "-",
            s.state.value,
            s.replication_state or "-",
            "-" if s.replica_lag_bytes is None else str(s.replica_lag_bytes),
        )
        for s in statuses
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
