"""The demo's router nodes: `count` configs made from one router.toml, each node listening on
the next port (6600, 6601, 6602 by default), with its own metrics and heartbeat ports, every
other node as a heartbeat peer and `[failover] mode = "managed"`, so that killing a primary
(or a router node) in the demo shows what high availability does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from router.config import Config
from router.tools.localcluster.layout import state_dir_of

__all__ = ["config_path", "demo_router_configs", "multi_host_dsn"]


def demo_router_configs(config: Config, count: int = 3) -> list[Config]:
    r, h, m = config.router, config.heartbeat, config.metrics
    names = [f"{r.node_name}-{i + 1}" for i in range(count)]
    # Written to the state dir, so relative paths must not move with the file.
    state_dir = str(state_dir_of(config))
    configs = []
    for i, name in enumerate(names):
        peers = tuple(f"{other}@{h.host}:{h.port + j}" for j, other in enumerate(names) if j != i)
        configs.append(replace(
            config,
            router=replace(r, node_name=name, listen_port=r.listen_port + i),
            metrics=replace(m, port=m.port + i if m.port else 0),
            heartbeat=replace(h, port=h.port + i, peers=peers),
            failover=replace(config.failover, mode="managed"),
            cluster=replace(config.cluster, state_dir=state_dir),
        ))
    return configs


def multi_host_dsn(configs: list[Config]) -> str:
    """One client address for every node (the client library fails over between them)."""
    hosts = ",".join(f"{c.router.listen_host}:{c.router.listen_port}" for c in configs)
    return f"georoute://{hosts}"


def config_path(config: Config) -> Path:
    return state_dir_of(config) / f"demo-{config.router.node_name}.toml"
