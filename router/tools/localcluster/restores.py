"""Nodes restored from backups (`georoute restore`) beside the local cluster: where they live
(<data root>/restores/<name>), the record of each (<state dir>/restores.json), and stopping
them, one by name or all when the cluster goes down (their files go with its data root)."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import asdict, dataclass
from typing import Any

from router.tools.localcluster.layout import Layout, pid_is_ours, read_pid
from router.tools.localcluster.process import terminate, wait_exit

__all__ = [
    "RestoredNode",
    "forget_restored",
    "load_restored",
    "restored_layout",
    "restored_pid",
    "save_restored",
    "stop_all_restored",
    "stop_restored",
]

_RECORD = "restores.json"


@dataclass(frozen=True, slots=True)
class RestoredNode:
    name: str
    shard: str
    port: int
    target: str  # the time asked for (ISO 8601, UTC) or "latest"
    backup_id: str
    created_at: str
    recovery_stop: str  # what PostgreSQL said when recovery stopped (from its log)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def restored_layout(layout: Layout) -> Layout:
    """A layout whose node directories are the restored nodes' (same state dir)."""
    return Layout(layout.state_dir, layout.data_root / "restores")


def load_restored(layout: Layout) -> dict[str, RestoredNode]:
    try:
        raw = json.loads((layout.state_dir / _RECORD).read_text())
        return {name: RestoredNode(**entry) for name, entry in raw.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError) as exc:
        raise OSError(f"unreadable {layout.state_dir / _RECORD}: {exc}") from exc


def save_restored(layout: Layout, nodes: dict[str, RestoredNode]) -> None:
    path = layout.state_dir / _RECORD
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({n: r.as_dict() for n, r in nodes.items()}, indent=2,
                              sort_keys=True) + "\n")
    tmp.replace(path)


def restored_pid(layout: Layout, name: str) -> int | None:
    pgdata = restored_layout(layout).pgdata(name)
    pid = read_pid(pgdata / "postmaster.pid")
    return pid if pid_is_ours(pid, pgdata) else None


def stop_restored(layout: Layout, name: str, timeout: float = 15.0) -> None:
    """Fast shutdown (SIGINT: clients are disconnected), then SIGTERM/SIGKILL if it lingers."""
    pid = restored_pid(layout, name)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    if not wait_exit(pid, timeout):
        terminate(pid)


def forget_restored(layout: Layout, name: str) -> None:
    """Stop it, delete its files and its record."""
    stop_restored(layout, name)
    nodes = load_restored(layout)
    record = nodes.pop(name, None)
    rl = restored_layout(layout)
    if record is not None:
        sock = rl.socket_dir(name, record.port)
        if sock.parent != rl.node_dir(name):
            shutil.rmtree(sock, ignore_errors=True)
    shutil.rmtree(rl.node_dir(name), ignore_errors=True)
    save_restored(layout, nodes)


def stop_all_restored(layout: Layout) -> None:
    """Every restored node, when the cluster goes down."""
    if not (layout.state_dir / _RECORD).exists():
        return
    for name in load_restored(layout):
        stop_restored(layout, name)
