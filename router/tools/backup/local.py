"""What the backup tools need of this machine: the PostgreSQL programs (those the local cluster
recorded, else found as `georoute cluster up` finds them), the unprivileged server user they run
as, the cluster's layout and the backup directories; and a lock per backup directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.config import Config
from router.tools.backup.errors import BackupError
from router.tools.localcluster.archive import BackupPaths
from router.tools.localcluster.binaries import PgBinaries, find_pg_bin, make_reachable
from router.tools.localcluster.layout import (
    Layout,
    config_dir,
    existing_layout,
    prepare_layout,
    state_dir_of,
)
from router.tools.localcluster.process import run_checked
from router.tools.localcluster.users import ServerUser, ensure_server_user

__all__ = ["LocalTools", "local_tools", "locked"]

_TOOLS = ("pg_basebackup", "pg_verifybackup", "pg_ctl", "postgres")


@dataclass(frozen=True, slots=True)
class LocalTools:
    config: Config
    user: ServerUser
    bins: PgBinaries
    layout: Layout
    paths: BackupPaths

    def run(self, argv: Sequence[str], what: str, timeout: float,
            env: dict[str, str] | None = None) -> str:
        """A PostgreSQL program as the server user (some refuse root); raises on failure."""
        kwargs: dict[str, Any] = self.user.popen_kwargs(self.layout.data_root)
        kwargs["env"].update(env or {})
        return run_checked(argv, what, timeout, **kwargs)

    def pg_env(self) -> dict[str, str]:
        """Environment for libpq programs: the database password, when one is set."""
        password = self.config.database.password()
        return {"PGPASSWORD": password} if password else {}

    def own(self, path: Path, mode: int = 0o700) -> None:
        """A directory we made, handed to the server user (who writes into it)."""
        os.chmod(path, mode)
        self.user.chown(path)


def local_tools(config: Config) -> LocalTools:
    user = ensure_server_user(config.cluster.server_user)
    state = state_dir_of(config)
    layout = existing_layout(config) if state.exists() else prepare_layout(config, user)
    recorded = layout.load_manifest().get("pg_bin")
    if recorded and all((Path(recorded) / t).exists() for t in _TOOLS):
        bins = PgBinaries(Path(recorded), "manifest")
    else:
        bins = make_reachable(find_pg_bin(config.cluster.pg_bin, config_dir(config)), user)
    missing = [t for t in _TOOLS if not os.access(bins.bin_dir / t, os.X_OK)]
    if missing:
        raise BackupError(f"{bins.bin_dir} ({bins.source}) lacks {', '.join(missing)}")
    return LocalTools(config, user, bins, layout, BackupPaths(config, layout))


@contextlib.contextmanager
def locked(directory: Path, shared: bool = False) -> Iterator[None]:
    """One backup or prune at a time per backup directory (restores may share it)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
