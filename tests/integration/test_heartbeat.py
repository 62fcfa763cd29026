"""Three real router processes exchange heartbeats on loopback: they see one another alive;
forged, replayed, malformed, oversized and unknown datagrams sent by the test are dropped,
counted and change nothing; a killed router is marked suspect, then dead, within the
configured bounds, by the two that remain (which keep their quorum)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

import client
from protocol.heartbeat import HeartbeatSender, ReportedHealth
from router.config import Config
from router.tools.localcluster import LocalCluster
from tests.integration.conftest import wait_until
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, router_config, running_router

SECRET = "heartbeat-test-secret-0123456789"
SHIFTS = (161, 162, 163)  # router ports, heartbeat ports and metrics ports move by these
INTERVAL, SUSPECT_AFTER, DEAD_AFTER = 0.2, 1.0, 2.0
SLACK = 1.5  # a loaded 2-core machine: scheduling and polling delays on top of the rules


def _configs(base: Config) -> list[Config]:
    configs = [router_config(base, port_shift=s) for s in SHIFTS]
    addresses = [f"{c.router.node_name}@127.0.0.1:{c.heartbeat.port}" for c in configs]
    return [
        replace(c, heartbeat=replace(
            c.heartbeat, interval_seconds=INTERVAL, suspect_after_seconds=SUSPECT_AFTER,
            dead_after_seconds=DEAD_AFTER, alive_after_heartbeats=2,
            peers=tuple(a for a in addresses if not a.startswith(c.router.node_name + "@")),
        ))
        for c in configs
    ]


@pytest.fixture(scope="module")
def routers(cluster: LocalCluster, migrated: Config) -> Iterator[list[RouterProcess]]:
    state = Path(migrated.cluster.state_dir)
    with pytest.MonkeyPatch.context() as mp, contextlib.ExitStack() as stack:
        mp.setenv(migrated.heartbeat.secret_env, SECRET)  # copied into each child's environment
        yield [stack.enter_context(running_router(c, state / f"router-hb-{i}.toml"))
               for i, c in enumerate(_configs(migrated))]


async def heartbeat_report(proc: RouterProcess) -> dict[str, Any]:
    async with await client.connect(proc.dsn, token=TOKEN) as db:
        report = (await db.topology())["heartbeat"]
    assert isinstance(report, dict)
    return report


def peer_states(report: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["state"] for p in report["peers"]}


def send_to(proc: RouterProcess, data: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("127.0.0.1", proc.config.heartbeat.port))


async def test_heartbeats_between_three_routers(routers: list[RouterProcess]) -> None:
    a, b, c = routers
    names = [r.config.router.node_name for r in routers]

    async def all_alive() -> bool:
        for proc, name in zip(routers, names, strict=True):
            states = peer_states(await heartbeat_report(proc))
            if states != {n: "alive" for n in names if n != name}:
                return False
        return True

    await wait_until(all_alive, within=20, what="three routers see one another alive")
    report = await heartbeat_report(a)
    assert report["quorum"] is True and (report["cluster_size"], report["majority"]) == (3, 2)
    seen_b = next(p for p in report["peers"] if p["name"] == names[1])
    assert seen_b["primaries"] == {s: f"{s}-1" for s in a.config.shards}

    # Bad datagrams from the test, as B or as a stranger: each dropped and counted by A.
    key = SECRET.encode()
    bogus = {"europe": "europe-2"}
    health = {"europe-1": ReportedHealth.DOWN}
    send_to(a, HeartbeatSender(b"not the shared secret", names[1], time.time_ns())
            .encode(health, bogus))  # forged
    send_to(a, HeartbeatSender(key, names[1], 1).encode(health, bogus))  # an old incarnation
    send_to(a, HeartbeatSender(key, names[1], seen_b["incarnation"])
            .encode(health, bogus))  # B's own sequence 0 again
    send_to(a, b"\x01" * 20)  # malformed
    send_to(a, b"\x00" * 1300)  # oversized
    send_to(a, HeartbeatSender(key, "stranger", time.time_ns()).encode(health, bogus))
    expected = {"forged": 1, "replayed": 2, "malformed": 1, "oversized": 1, "unknown_peer": 1}

    async def counted() -> bool:
        return (await heartbeat_report(a))["dropped"] == expected

    await wait_until(counted, what=f"A counts the drops {expected}")
    report = await heartbeat_report(a)
    seen_b_after = next(p for p in report["peers"] if p["name"] == names[1])
    assert seen_b_after["state"] == "alive"
    assert seen_b_after["incarnation"] == seen_b["incarnation"]
    assert seen_b_after["primaries"] == seen_b["primaries"]  # not the forged view
    assert (await heartbeat_report(b))["dropped"] == dict.fromkeys(expected, 0)
    record("forged heartbeats", "UDP datagrams to a live router node, as a peer or a stranger: "
           "signed with another secret, an old incarnation, a replay of a sequence, malformed, "
           "oversized, an unknown peer; each claiming europe's primary down and another one",
           None, dropped=(await heartbeat_report(a))["dropped"],
           peer_view_changed=seen_b_after["primaries"] != seen_b["primaries"])
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"http://127.0.0.1:{a.config.metrics.port}/metrics")).text
    assert 'georoute_heartbeats_dropped_total{reason="replayed"} 2.0' in metrics
    assert 'georoute_heartbeat_peers{state="alive"} 2.0' in metrics

    # Kill C (SIGKILL: its heartbeats stop at once, with no drain in between): A and B mark
    # it suspect, then dead, within the configured bounds.
    c.proc.kill()
    c.proc.wait()
    stopped = time.monotonic()
    seen: dict[str, tuple[float, float]] = {}  # state -> (test clock, router's silence)

    async def judged(state: str) -> bool:
        for proc in (a, b):
            peer = next(p for p in (await heartbeat_report(proc))["peers"]
                        if p["name"] == names[2])
            if proc is a and peer["state"] in ("suspect", "dead") and peer["state"] not in seen:
                seen[peer["state"]] = (time.monotonic() - stopped, peer["silent_seconds"])
            if peer["state"] != state:
                return False
        return True

    await wait_until(lambda: judged("suspect"), within=SUSPECT_AFTER + INTERVAL + SLACK,
                     what="C suspected by A and B")
    await wait_until(lambda: judged("dead"), within=DEAD_AFTER + INTERVAL + SLACK,
                     what="C dead to A and B")
    # Never early: each judgement came after at least its silence, on the router's own clock.
    assert seen["suspect"][1] >= SUSPECT_AFTER
    assert seen["dead"][1] >= DEAD_AFTER
    assert seen["dead"][0] <= DEAD_AFTER + INTERVAL + SLACK
    for proc, other in ((a, names[1]), (b, names[0])):
        report = await heartbeat_report(proc)
        assert peer_states(report)[other] == "alive"
        assert report["quorum"] is True  # two of three
