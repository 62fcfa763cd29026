"""Signals to a whole local node, for fault tests on a scratch cluster: `kill -9` of a node
kills its postmaster and every server process under it (a machine that dies takes them all;
PostgreSQL's server processes are process-group leaders of their own, so a process group
would miss them), and SIGSTOP freezes them all (a node that hangs rather than dies).
Only processes of nodes the test started are signalled, by pid."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from router.tools.localcluster import LocalCluster
from tests.support.wait import until

__all__ = ["children", "gone", "signal_node"]


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # pid (comm) state ppid ...: comm may hold spaces or parentheses, so split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def _tree(pid: int) -> list[int]:
    out = []
    for child in children(pid):
        out.append(child)
        out.extend(_tree(child))
    return out


def signal_node(local: LocalCluster, name: str, sig: int) -> list[int]:
    """Send `sig` to node `name` (a PostgreSQL node or the document store) and every process
    under it; returns the pids signalled. For SIGKILL and SIGSTOP the top process is stopped
    first, so it cannot start another process between the listing and the signal."""
    top = local.pid(name)
    if top is None:
        raise RuntimeError(f"node {name} is not running")
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        os.kill(top, signal.SIGSTOP)
        below = _tree(top)
        for pid in below:
            _send(pid, sig)
        _send(top, sig)
    else:  # SIGCONT and the rest: the processes below first, then the top one
        below = _tree(top)
        for pid in below:
            _send(pid, sig)
        _send(top, sig)
    return [top, *below]


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # exited meanwhile


async def gone(pids: list[int], within: float = 30.0) -> None:
    """Until every process in `pids` has been reaped. A killed postmaster stays a zombie until
    its parent (here PID 1, which reaps now and then) collects it, and a new postmaster takes
    the zombie's lock file for a live one's: restarting a node killed with SIGKILL waits for
    this first."""
    await until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
                within=within, what=f"processes {pids} to be reaped", poll=0.01)
