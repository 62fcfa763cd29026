"""Faults of the router nodes themselves, under the checker's load (tests/support/checker.py):
two router nodes on the session's cluster (they are ours to kill; the cluster is untouched),
clients given both in a multi-host DSN."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

from router.config import Config
from tests.support.checker import Checker, SqlTarget, with_checker_table
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router
from tests.support.wait import until

SHIFTS = (191, 192)  # this module's router nodes: the session router's ports moved by these


@contextlib.contextmanager
def _two_routers(migrated: Config, name: str) -> Iterator[tuple[RouterProcess, RouterProcess]]:
    state = Path(migrated.cluster.state_dir)
    a_cfg, b_cfg = (with_checker_table(router_config(migrated, port_shift=s)) for s in SHIFTS)
    with running_router(a_cfg, state / f"{name}-a.toml") as a, \
            running_router(b_cfg, state / f"{name}-b.toml") as b:
        yield a, b


def _dsn(*routers: RouterProcess) -> str:
    hosts = ",".join(f"{r.config.router.listen_host}:{r.config.router.listen_port}"
                     for r in routers)
    return f"georoute://{hosts}"


async def test_kill_9_of_a_router_node_under_load(migrated: Config) -> None:
    """Router A is killed (SIGKILL) while four sessions write and read through A and B: each
    moves to B; writes in flight on A are unknown (resolved by reading the shards), nothing
    acknowledged is lost or applied twice, and every session still reads its writes."""
    target = SqlTarget(migrated)
    await target.prepare()
    with _two_routers(migrated, "router-kill") as (a, b):
        checker = Checker(target, _dsn(a, b), TOKEN, writers=4)
        async with checker.running():
            await checker.progress(200, what="before the kill")
            a.proc.send_signal(signal.SIGKILL)  # mid-flight: the writers keep running
            await until(lambda: a.proc.poll() is not None, within=10, what="router A to die")
            await checker.progress(200, within=30, what="after router A was killed")
        report = await checker.report()
        assert b.proc.poll() is None
    record("kill -9 of a router node under load",
           "SIGKILL to router A of two, mid-load; 4 sessions with a two-host DSN", report)
    report.assert_safe()
    assert report.longest_unavailability < 5, report.summary()
