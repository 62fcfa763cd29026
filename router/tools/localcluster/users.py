"""Who the database servers run as: PostgreSQL refuses root, so a root orchestrator drops to an
unprivileged system user for every server program and checks that user can reach its files."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.errors import ClusterError

__all__ = ["ServerUser", "ensure_server_user"]


@dataclass(frozen=True, slots=True)
class ServerUser:
    """The OS user the servers run as. `switch` is False when we are not root (run as ourselves)."""

    name: str
    uid: int
    gid: int
    switch: bool

    def popen_kwargs(self, home: Path) -> dict[str, Any]:
        """Keyword arguments for subprocess/asyncio that run a child as this user."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "LC_"))}
        # Without HOME the libpq default passfile points into root's home.
        env.update(HOME=str(home), LANG="C.UTF-8", LC_ALL="C.UTF-8")
        kwargs: dict[str, Any] = {"env": env}
        if self.switch:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return kwargs

    def can_traverse(self, path: Path) -> bool:
        """Whether this user may search `path` (and so every parent of it)."""
        if not self.switch:
            return os.access(path, os.X_OK)
        test = shutil.which("test") or "/usr/bin/test"
        proc = subprocess.run(
            [test, "-x", str(path)],
            user=self.uid,
            group=self.gid,
            extra_groups=[],
            check=False,
            stdin=subprocess.DEVNULL,
        )
        return proc.returncode == 0

    def chown(self, path: Path) -> None:
        if self.switch:
            os.chown(path, self.uid, self.gid)


def ensure_server_user(name: str) -> ServerUser:
    """As root: look up (or create) the system user `name`. Otherwise: the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=False)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode not in (0, 9):  # 9: created concurrently by another process
            raise ClusterError(
                f"cannot create server user {name!r} (cluster.server_user): "
                f"{proc.stderr.strip() or proc.returncode}"
            ) from None
        entry = pwd.getpwnam(name)
    if entry.pw_uid == 0:
        raise ClusterError(f"cluster.server_user {name!r} is root; PostgreSQL refuses root")
    return ServerUser(entry.pw_name, entry.pw_uid, entry.pw_gid, switch=True)
