"""Where the local cluster keeps its files (state dir, data root, sockets, manifest) and how we
recognise a process as one we started: its pid is alive and its command line names our directory."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.config import Config
from router.tools.localcluster.users import ServerUser

__all__ = [
    "Layout",
    "config_dir",
    "existing_layout",
    "pid_is_ours",
    "prepare_layout",
    "read_pid",
    "state_dir_of",
]

_DATA_ROOT_RECORD = "data-root"
_MANIFEST = "cluster.json"
_SOCKET_PATH_MAX = 107


def config_dir(config: Config) -> Path:
    """The directory relative paths in the config are relative to (cwd for in-memory configs)."""
    source = Path(config.source)
    return source.parent if source.is_absolute() else Path.cwd()


def state_dir_of(config: Config) -> Path:
    """config.cluster.state_dir; a relative path is relative to the config file's directory."""
    return (config_dir(config) / config.cluster.state_dir).resolve()


@dataclass(frozen=True, slots=True)
class Layout:
    state_dir: Path  # owned by us: manifest, docstore data and logs
    data_root: Path  # PostgreSQL node dirs; == state_dir unless the server user cannot reach it

    def node_dir(self, name: str) -> Path:
        return self.data_root / name

    def pgdata(self, name: str) -> Path:
        return self.node_dir(name) / "data"

    def log_file(self, name: str) -> Path:
        return self.node_dir(name) / "postgres.log"

    def socket_dir(self, name: str, port: int) -> Path:
        path = self.node_dir(name) / "sock"
        if len(f"{path}/.s.PGSQL.{port}") < _SOCKET_PATH_MAX:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
        return Path(f"/tmp/georoute-sock-{digest}")

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / _MANIFEST

    @property
    def docstore_dir(self) -> Path:
        return self.state_dir / "docstore"

    @property
    def docstore_data(self) -> Path:
        return self.docstore_dir / "data"

    @property
    def docstore_pidfile(self) -> Path:
        return self.docstore_dir / "secantusd.pid"

    @property
    def docstore_log(self) -> Path:
        return self.docstore_dir / "secantusd.log"

    def load_manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {"nodes": {}}
        return data if isinstance(data, dict) and "nodes" in data else {"nodes": {}}

    def save_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.manifest_path)


def existing_layout(config: Config) -> Layout:
    """The layout as recorded on disk, without creating anything (for status and down)."""
    state = state_dir_of(config)
    try:
        data_root = Path((state / _DATA_ROOT_RECORD).read_text().strip())
    except OSError:
        data_root = state
    return Layout(state, data_root)


def prepare_layout(config: Config, user: ServerUser) -> Layout:
    """Create the state dir; choose a data root the server user can traverse and record it."""
    state = state_dir_of(config)
    state.mkdir(parents=True, exist_ok=True)
    record = state / _DATA_ROOT_RECORD
    if user.can_traverse(state):
        data_root = state
    else:
        digest = hashlib.sha256(str(state).encode()).hexdigest()[:8]
        data_root = Path(f"/var/tmp/georoute-data-{digest}")
    data_root.mkdir(parents=True, exist_ok=True)
    os.chmod(data_root, 0o755)
    record.write_text(f"{data_root}\n")
    return Layout(state, data_root)


def read_pid(path: Path) -> int | None:
    """The pid on the first line of a pid file (postmaster.pid or ours), or None."""
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    return int(first) if first.isdigit() else None


def pid_is_ours(pid: int | None, marker: Path) -> bool:
    """Alive and started by us: /proc/<pid>/cmdline contains our data directory `marker`."""
    if not pid or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                return False  # a zombie is dead; it only waits to be reaped
    except OSError:
        return False
    return str(marker).encode() in cmdline
