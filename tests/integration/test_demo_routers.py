"""`make demo`'s router nodes (router/tools/demo_routers.py): three nodes made from one
router.toml hear each other, and a client given all three (a multi-host address) keeps
working when one of them is killed."""

from __future__ import annotations

import contextlib
import signal
from dataclasses import replace

import pytest

import client
from router.config import Config, load_config
from router.tools.config_write import config_to_toml
from router.tools.demo_routers import config_path, demo_router_configs, multi_host_dsn
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.support.router_proc import TOKEN, router_config, running_router

DEMO_SHIFT = 260  # from the session router's ports: no other test's routers use these

SECRET = "demo-test-secret-0123456789"


def test_three_configs_that_load_back_and_name_each_other(migrated: Config) -> None:
    configs = demo_router_configs(migrated)
    ports = [c.router.listen_port for c in configs]
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2]
    names = [c.router.node_name for c in configs]
    for config in configs:
        assert config.failover.mode == "managed"
        assert sorted(p.split("@")[0] for p in config.heartbeat.peers) == sorted(
            set(names) - {config.router.node_name})
    assert multi_host_dsn(configs) == "georoute://" + ",".join(
        f"127.0.0.1:{p}" for p in ports)


async def test_a_client_of_all_three_survives_one_killed(migrated: Config) -> None:
    # Ports of their own (DEMO_SHIFT): the demo's are the session router's (its listener,
    # metrics and heartbeat ports), and that router runs whenever an earlier test used it.
    base = router_config(replace(migrated, heartbeat=replace(
        migrated.heartbeat, interval_seconds=0.2, suspect_after_seconds=1.0,
        dead_after_seconds=2.0, alive_after_heartbeats=2)), port_shift=DEMO_SHIFT)
    configs = demo_router_configs(base)
    with contextlib.ExitStack() as stack:
        procs = []
        for config in configs:
            path = config_path(config)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config_to_toml(config))
            assert load_config(path).router.node_name == config.router.node_name
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(config.heartbeat.secret_env, SECRET)
                procs.append(stack.enter_context(running_router(config, path)))

        async def all_alive() -> bool:
            for proc in procs:
                states = peer_states(await heartbeat_report(proc))
                if set(states.values()) != {"alive"}:
                    return False
            return True

        await wait_until(all_alive, within=20, what="three router nodes alive to each other")
        async with await client.connect(multi_host_dsn(configs), token=TOKEN,
                                        pool_size=3) as db:
            assert await db.fetchval("SELECT 1", shard="europe") == 1
            procs[0].signal(signal.SIGKILL)
            procs[0].proc.wait(timeout=10)
            for _ in range(20):  # every request answered, by the two left
                assert await db.fetchval("SELECT 1", shard="europe") == 1
