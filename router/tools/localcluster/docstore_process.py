"""The local document store: one SecantusDB process (MongoDB wire protocol) started detached from
the virtualenv's bin, recorded by pid file, and stopped by that pid. It may run as root."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from router.errors import ClusterError
from router.tools.localcluster.layout import Layout, pid_is_ours, read_pid
from router.tools.localcluster.process import spawn_detached, terminate

__all__ = ["DocStoreProcess"]


def _secantusd() -> Path:
    exe = Path(sys.executable).parent / "secantusd-py"
    if not exe.exists():
        raise ClusterError(f"{exe} not found: install the SecantusDB package into this venv")
    return exe


class DocStoreProcess:
    def __init__(self, layout: Layout, port: int) -> None:
        self.layout = layout
        self.port = port

    def pid(self) -> int | None:
        pid = read_pid(self.layout.docstore_pidfile)
        return pid if pid_is_ours(pid, self.layout.docstore_data) else None

    def start(self) -> int:
        """Start it detached if it is not running; returns its pid (does not wait for it)."""
        pid = self.pid()
        if pid is not None:
            return pid
        self.layout.docstore_data.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HOME=str(self.layout.docstore_dir))
        argv = [
            sys.executable, str(_secantusd()),
            "--host", "127.0.0.1", "--port", str(self.port),
            "--storage-path", str(self.layout.docstore_data), "--log-level", "WARNING",
        ]
        # cwd is our own dir: secantusd-py would otherwise pick up a ./secantusd.toml.
        pid = spawn_detached(argv, self.layout.docstore_log, self.layout.docstore_dir, env)
        self.layout.docstore_pidfile.write_text(f"{pid}\n")
        return pid

    def wait_ready(self, deadline: float) -> None:
        """Until a ping succeeds; fails early if the process died (see its log)."""
        client: MongoClient[dict[str, object]] = MongoClient(
            host="127.0.0.1", port=self.port, serverSelectionTimeoutMS=200,
            connectTimeoutMS=200, directConnection=True,
        )
        try:
            while True:
                try:
                    client.admin.command("ping")
                    return
                except PyMongoError as exc:
                    if self.pid() is None:
                        raise ClusterError(
                            f"document store on port {self.port} exited; see "
                            f"{self.layout.docstore_log}"
                        ) from exc
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"timed out waiting for the document store on port {self.port}"
                        ) from exc
        finally:
            client.close()

    def stop(self) -> None:
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout=10.0)
        self.layout.docstore_pidfile.unlink(missing_ok=True)
