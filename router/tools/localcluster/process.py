"""Process plumbing for servers we start: detached launch, waiting for a pid to exit without
sleeping (pidfd), and stopping by pid with TERM then KILL."""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.errors import ClusterError

__all__ = ["run_checked", "spawn_detached", "terminate", "wait_exit"]


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until `pid` exits (True) or `timeout` passes (False). Works for non-children."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def terminate(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is still alive after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        if wait_exit(pid, wait):
            return
    raise ClusterError(f"process {pid} survived SIGKILL")


def spawn_detached(
    argv: Sequence[str], log: Path, cwd: Path, env: dict[str, str] | None = None
) -> int:
    """Start `argv` in its own session, reparented away from us, output appended to `log`.

    A short-lived shell forks the server and prints its pid, so no Popen object outlives the
    call (and the server survives the CLI that started it).
    """
    script = 'log=$1; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    proc = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=False,
    )
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out.isdigit():
        raise ClusterError(f"cannot start {argv[0]}: {proc.stderr.strip() or out}")
    return int(out)


def run_checked(argv: Sequence[str], what: str, timeout: float, **kwargs: Any) -> str:
    """Run a short command; on failure raise a ClusterError with the tail of its output."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{what}: timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        raise ClusterError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout
