"""plan_failover on live state, on a scratch cluster of its own: three real routers, one of
them cut off (its heartbeats are signed with another secret, so the others drop them as
forged and it drops theirs). With europe's primary stopped, the two that hear each other
name the same promoter and replica; the isolated one plans nothing, and says why. The plan
is advisory (nothing promotes yet): the test reads it from each router's topology view."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from router.config import Config
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.support.router_proc import RouterProcess, router_config, running_router
from tests.support.scratch import scratch_cluster

# Far from the session's cluster and the other scratch ones (5000, 5100, 5400).
SCRATCH_OFFSET = 5600
SECRET, OTHER_SECRET = "plan-test-secret-0123456789", "another-secret-9876543210"


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(test_config, SCRATCH_OFFSET, "scratch-plan") as pair:
        yield pair


@pytest.fixture(scope="module")
def routers(scratch: tuple[LocalCluster, Config]) -> Iterator[list[RouterProcess]]:
    local, base = scratch
    base = replace(base, failover=replace(base.failover, down_after_seconds=0.5))
    configs = [router_config(base, port_shift=s) for s in (1, 2, 3)]
    addresses = [f"{c.router.node_name}@127.0.0.1:{c.heartbeat.port}" for c in configs]
    configs = [
        replace(c, heartbeat=replace(
            c.heartbeat, interval_seconds=0.2, suspect_after_seconds=1.0, dead_after_seconds=2.0,
            alive_after_heartbeats=2,
            peers=tuple(a for a in addresses if not a.startswith(c.router.node_name + "@")),
        ))
        for c in configs
    ]
    with contextlib.ExitStack() as stack:
        procs = []
        for i, config in enumerate(configs):
            with pytest.MonkeyPatch.context() as mp:  # the environment is copied at start
                mp.setenv(config.heartbeat.secret_env, OTHER_SECRET if i == 2 else SECRET)
                procs.append(stack.enter_context(
                    running_router(config, local.state_dir / f"router-plan-{i}.toml")))
        yield procs


async def plans(proc: RouterProcess) -> dict[str, Any]:
    report = await heartbeat_report(proc)
    return dict(report["failover_plans"])


async def test_the_majority_agrees_on_one_promotion_and_the_isolated_node_abstains(
    scratch: tuple[LocalCluster, Config], routers: list[RouterProcess],
) -> None:
    local, _ = scratch
    a, b, c = routers
    name_a, name_b = a.config.router.node_name, b.config.router.node_name

    async def partitioned() -> bool:
        states = [peer_states(await heartbeat_report(p)) for p in routers]
        return (states[0][name_b] == "alive" and states[1][name_a] == "alive"
                and set(states[2].values()) == {"dead"})

    await wait_until(partitioned, within=20, what="A and B alive to each other, C cut off")

    async def c_drops_theirs() -> bool:
        return bool((await heartbeat_report(c))["dropped"]["forged"] >= 2)

    await wait_until(c_drops_theirs, what="C drops A's and B's heartbeats as forged")
    for proc in routers:  # every primary up: nobody plans anything
        assert {p["reason"] for p in (await plans(proc)).values()} == {"primary_up"}

    local.stop_node("europe-1")
    expected = {"action": "promote", "promoter": min(name_a, name_b),
                "replica": "europe-2", "voters": sorted([name_a, name_b])}

    async def majority_agrees() -> bool:
        for proc in (a, b):
            europe = (await plans(proc))["europe"]
            if {k: europe.get(k) for k in expected} != expected:
                return False
        return True

    await wait_until(majority_agrees, within=15, what="A and B plan the same promotion")

    async def isolated_abstains() -> bool:
        return (await plans(c))["europe"].get("reason") == "isolated"

    await wait_until(isolated_abstains, within=10, what="C plans nothing: isolated")
    for proc in routers:
        others = await plans(proc)
        assert others["asia"]["reason"] == others["north_america"]["reason"] == "primary_up"
