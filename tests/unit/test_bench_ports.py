"""The bench smoke run picks a block of free ports, so two test sessions' smoke runs (on the
fixed +21000 block before) cannot stop each other's cluster."""

from __future__ import annotations

import socket
from pathlib import Path

from bench.stack import BENCH_PORT_OFFSET, bench_config, config_ports, smoke_offset

ROUTER_TOML = Path(__file__).resolve().parents[2] / "router.toml"


def test_a_taken_port_moves_the_smoke_run_to_the_next_free_block(tmp_path: Path) -> None:
    first = BENCH_PORT_OFFSET + 1000
    chosen = smoke_offset(ROUTER_TOML, first)
    kind, port = config_ports(bench_config(chosen, tmp_path))[0]
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            holder.listen()
        moved = smoke_offset(ROUTER_TOML, first)
    assert moved > chosen and (moved - first) % 100 == 0
    assert all(p != port for _, p in config_ports(bench_config(moved, tmp_path)))
