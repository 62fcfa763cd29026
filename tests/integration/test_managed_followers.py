"""Managed failover on a shard of one primary and TWO replicas: after the promotion, the
other replica follows the new primary (the promoter makes its slot there and re-points its
primary_conninfo), so it replays the writes that come after and the routers read from it
again. Without that, it would keep asking the dead old primary for WAL and never see another
write. A scratch cluster of its own: europe gets a third node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from router.core.conninfo import format_conninfo, parse_conninfo, sql_literal
from router.tools.db.health_report import check_health
from router.tools.db.migrate import migrate
from router.tools.localcluster import LocalCluster
from router.tools.localcluster.layout import existing_layout
from tests.integration.conftest import wait_until
from tests.integration.test_heartbeat import heartbeat_report, peer_states
from tests.integration.test_managed_failover import (
    INSERT,
    SECRET,
    managed_configs,
    start_router,
    topology,
)
from tests.support.ids import new_id
from tests.support.router_proc import SCRATCH_DDL, TOKEN
from tests.support.scratch import arrange_shard, scratch_cluster, with_third_node

SCRATCH_OFFSET = 6800  # far from the session's cluster and the other scratch ones


@pytest.fixture(scope="module")
def scratch(test_config: Config) -> Iterator[tuple[LocalCluster, Config]]:
    with scratch_cluster(with_third_node(test_config, "europe"), SCRATCH_OFFSET,
                         "scratch-followers") as pair:
        asyncio.run(migrate(pair[1], documents=False))
        yield pair


async def settings(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT current_setting('primary_conninfo'), "
                                  "current_setting('primary_slot_name')")
        assert row is not None
        return row[0], row[1]
    finally:
        await conn.close()


async def has_row(dsn: str, item: uuid.UUID) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM rt_items WHERE item_id = $1",
                                        item))
    finally:
        await conn.close()

async def follows(local: LocalCluster, db: client.Client, replica: str, row: uuid.UUID,
                  replay_within: float) -> None:
    """`replica` replays the new primary's write of `row`, and the router reads it there."""

    async def replayed() -> bool:
        return await has_row(local.dsn(replica), row)

    await wait_until(replayed, within=replay_within,
                     what=f"{replica} replays the new primary's write")

    async def read_from_it() -> bool:
        rows, route = await db.fetch_routed(
            "SELECT payload FROM rt_items WHERE item_id = $1", row, consistency="replica")
        return bool(route is not None and route.node == replica
                    and [r[0] for r in rows] == ["after"])

    await wait_until(read_from_it, within=10, what=f"reads served by {replica}")


async def arrange(local: LocalCluster, primary: str) -> None:
    """europe with `primary` writable, the two others its standbys, rt_items there."""
    await arrange_shard(local, "europe", primary)
    conn = await asyncpg.connect(local.dsn(primary))
    try:
        await conn.execute(SCRATCH_DDL)  # (the first test makes it through a router)
    finally:
        await conn.close()


async def routers_see(routers: list[Any], primary: str, standbys_up: Sequence[str]) -> bool:
    """Every router has `primary` as europe's primary and `standbys_up` up, and the first
    two see each other alive."""
    for proc in routers:
        europe = (await topology(proc))["shards"]["europe"]
        nodes = {n["name"]: n for n in europe["nodes"]}
        if europe["primary"] != primary or any(nodes[n]["health"] != "up"
                                               for n in standbys_up):
            return False
    return peer_states(await heartbeat_report(routers[0])).get(
        routers[1].config.router.node_name) == "alive"


async def promotions(routers: list[Any]) -> list[dict[str, Any]]:
    """The promotions the routers' promoters report, all of them."""
    reports = [(await heartbeat_report(p))["promoter"] for p in routers]
    return [r for report in reports for r in report["promotions"]]


async def promoter_report(routers: list[Any]) -> dict[str, Any]:
    """The report of the promoter that promoted (the one with a promotion)."""
    reports = [(await heartbeat_report(p))["promoter"] for p in routers]
    return next(r for r in reports if r["promotions"])


async def test_the_other_replica_follows_the_promoted_one(
    scratch: tuple[LocalCluster, Config],
) -> None:
    local, base = scratch
    configs = managed_configs(base)[:2]  # two of the three configured: a majority
    conninfo_before, slot = await settings(local.dsn("europe-3"))
    assert slot and f"port={local.node('europe-1').port}" in conninfo_before
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-f{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        names = [r.config.router.node_name for r in routers]

        async def alive() -> bool:
            for proc, other in zip(routers, reversed(names), strict=True):
                if peer_states(await heartbeat_report(proc)).get(other) != "alive":
                    return False
            return True

        await wait_until(alive, within=20, what="the two routers alive to each other")
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(SCRATCH_DDL, shard="europe")
            europe = base.shards["europe"].number  # ids that route to europe
            before = new_id(europe)
            await db.execute(INSERT, before, "before")

            async def on_both_replicas() -> bool:
                return (await has_row(local.dsn("europe-2"), before)
                        and await has_row(local.dsn("europe-3"), before))

            await wait_until(on_both_replicas, within=10, what="the row on both replicas")
            health = {n.name: n for n in (await check_health(base)).nodes}
            assert health["europe-3"].upstream == f"127.0.0.1:{local.node('europe-1').port}"
            pid = local.pid("europe-1")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            async def promoted() -> bool:
                for proc in routers:
                    if (await topology(proc))["shards"]["europe"]["primary"] != "europe-2":
                        return False
                return True

            await wait_until(promoted, within=20, what="europe-2 the primary everywhere")
            after = new_id(europe)
            await db.execute(INSERT, after, "after")  # (writes held until the switch)
            assert await has_row(local.dsn("europe-2"), after)

            await follows(local, db, "europe-3", after, replay_within=10)

        # Its primary_conninfo names the new primary; every other setting is as it was.
        conninfo_after, slot_after = await settings(local.dsn("europe-3"))
        assert slot_after == slot
        old, new = dict(parse_conninfo(conninfo_before)), dict(parse_conninfo(conninfo_after))
        assert new.pop("port") == str(local.node("europe-2").port)
        assert new.pop("host") == "127.0.0.1"
        assert {k: v for k, v in old.items() if k not in ("host", "port")} == new
        primary = await asyncpg.connect(local.dsn("europe-2"))
        try:
            assert await primary.fetchval(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot)
        finally:
            await primary.close()
        # `georoute health` shows where each standby streams from.
        health = {n.name: n for n in (await check_health(base)).nodes}
        assert health["europe-3"].upstream == f"127.0.0.1:{local.node('europe-2').port}"
        # The promoter's report (the topology view's heartbeat section) says so.
        reports = [(await heartbeat_report(p))["promoter"] for p in routers]
        records = [r for report in reports for r in report["promotions"]]
        assert len(records) == 1, records
        record: dict[str, Any] = records[0]
        assert [(f["replica"], f["outcome"]) for f in record["followers"]] == [
            ("europe-3", "repointed")]
        assert any("europe-3 repointed" in step for report in reports
                   for step in report["last_step"].values())


async def test_a_replica_down_during_the_promotion_follows_when_it_comes_back(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """europe-3 is stopped when europe-2 (the primary after the first test) dies: the promoter
    names it unreachable; started again, it still asks the dead europe-2 for WAL, until the
    promoting router sees it up and re-points it at the new primary."""
    local, base = scratch
    await arrange(local, "europe-2")
    local.stop_node("europe-3")
    configs = managed_configs(base)[:2]
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-g{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]

        await wait_until(lambda: routers_see(routers, "europe-2", ["europe-1"]), within=20,
                         what="routers on europe-2, europe-1 its standby")
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            europe = base.shards["europe"].number
            before = new_id(europe)
            await db.execute(INSERT, before, "before")

            async def on_europe_1() -> bool:
                return await has_row(local.dsn("europe-1"), before)

            await wait_until(on_europe_1, within=10, what="the row on europe-1")
            pid = local.pid("europe-2")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            async def promoted() -> bool:
                return len(await promotions(routers)) == 1

            await wait_until(promoted, within=20, what="europe-1 promoted")
            (record,) = await promotions(routers)
            assert record["new_primary"] == "europe-1"
            assert [(f["replica"], f["outcome"]) for f in record["followers"]] == [
                ("europe-3", "unreachable")]
            after = new_id(europe)
            await db.execute(INSERT, after, "after")

            local.start_node("europe-3")  # it asks europe-2, which is dead, for WAL

            await follows(local, db, "europe-3", after, replay_within=15)
        conninfo, _ = await settings(local.dsn("europe-3"))
        assert dict(parse_conninfo(conninfo))["port"] == str(local.node("europe-1").port)
        promoter = await promoter_report(routers)
        assert [(f["replica"], f["outcome"]) for f in promoter["followers"]["europe"]] == [
            ("europe-3", "repointed")]
        assert "europe-3 repointed" in promoter["last_step"]["europe"]


async def test_a_replica_whose_repoint_failed_is_tried_again_until_it_follows(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """Both standbys' ALTER SYSTEM fails at first (a directory where PostgreSQL writes
    postgresql.auto.conf.tmp: EISDIR, as a full or read-only disk would fail it): after the
    promotion the promoter names the other standby failed; once the fault is gone it
    re-points it on a later try, and it replays the new primary's writes."""
    local, base = scratch
    await arrange(local, "europe-1")
    configs = managed_configs(base)[:2]
    layout = existing_layout(local.config)
    blockers = [layout.pgdata(n) / "postgresql.auto.conf.tmp" for n in ("europe-2", "europe-3")]
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-h{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]

        await wait_until(lambda: routers_see(routers, "europe-1", ["europe-2", "europe-3"]),
                         within=30, what="routers on europe-1, two standbys up")
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            europe = base.shards["europe"].number
            before = new_id(europe)
            await db.execute(INSERT, before, "before")

            async def on_both() -> bool:
                return (await has_row(local.dsn("europe-2"), before)
                        and await has_row(local.dsn("europe-3"), before))

            await wait_until(on_both, within=10, what="the row on both standbys")
            for blocker in blockers:
                blocker.mkdir()
            try:
                pid = local.pid("europe-1")
                assert pid is not None
                os.kill(pid, signal.SIGKILL)

                async def promoted() -> bool:
                    return len(await promotions(routers)) == 1

                await wait_until(promoted, within=20, what="a standby promoted")
                (record,) = await promotions(routers)
                new_primary = record["new_primary"]
                other = ({"europe-2", "europe-3"} - {new_primary}).pop()
                [(replica, outcome)] = [(f["replica"], f["outcome"])
                                        for f in record["followers"]]
                assert (replica, outcome) == (other, "failed"), record
                after = new_id(europe)
                await db.execute(INSERT, after, "after")
            finally:
                for blocker in blockers:
                    if blocker.exists():
                        blocker.rmdir()

            await follows(local, db, other, after, replay_within=20)
        conninfo, _ = await settings(local.dsn(other))
        assert dict(parse_conninfo(conninfo))["port"] == str(local.node(new_primary).port)
        promoter = await promoter_report(routers)
        assert [(f["replica"], f["outcome"]) for f in promoter["followers"]["europe"]] == [
            (other, "repointed")]


async def test_a_switchover_repoints_the_shards_other_standby(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """`georoute cluster switchover` to one standby: the shard's other standby, which asked
    the old primary for WAL, follows the new primary and replays its writes."""
    local, _ = scratch
    for name in ("europe-1", "europe-2", "europe-3"):  # what the tests before left stopped
        if local.pid(name) is None:
            await asyncio.to_thread(local.rejoin, name)

    async def in_recovery(name: str) -> bool:
        conn = await asyncpg.connect(local.dsn(name))
        try:
            return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        finally:
            await conn.close()

    standbys = [n for n in ("europe-1", "europe-2", "europe-3") if await in_recovery(n)]
    assert len(standbys) == 2, standbys
    target, other = standbys
    report = await asyncio.to_thread(local.switchover, "europe", target)
    assert report.new_primary == target
    assert [(f.replica, f.outcome.value) for f in report.followers] == [(other, "repointed")]
    conninfo, _ = await settings(local.dsn(other))
    assert dict(parse_conninfo(conninfo))["port"] == str(local.node(target).port)
    row = uuid.uuid4()
    primary = await asyncpg.connect(local.dsn(target))
    try:
        await primary.execute(INSERT, row, "after")
    finally:
        await primary.close()

    async def replayed() -> bool:
        return await has_row(local.dsn(other), row)

    await wait_until(replayed, within=15, what=f"{other} replays {target}'s write")


async def receiver(dsn: str) -> tuple[str, int] | None:
    """(status, sender port) of the node's WAL receiver; None when none runs."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT status, sender_port FROM pg_stat_wal_receiver")
        return None if row is None else (row[0], row[1])
    finally:
        await conn.close()


async def test_routers_that_never_saw_the_promotion_repoint_a_standby_that_comes_back(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """No router remembers anything: a standby stopped during a promotion is started again
    only after the routers that promoted have stopped. It still names the dead old primary;
    fresh routers, which never saw the promotion, find that in its primary_conninfo and
    re-point it (reconciliation, router/core/reconcile.py), and it streams from the new
    primary and replays its writes."""
    local, base = scratch
    names = ("europe-1", "europe-2", "europe-3")
    for name in names:  # what the tests before left stopped
        if local.pid(name) is None:
            await asyncio.to_thread(local.rejoin, name)
    standbys = []
    for name in names:
        conn = await asyncpg.connect(local.dsn(name))
        try:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                standbys.append(name)
            else:
                old = name
                await conn.execute(SCRATCH_DDL)
        finally:
            await conn.close()
    new, back = standbys  # `back` is stopped, so `new` is the one promoted
    configs = managed_configs(base)[:2]
    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-p{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]
        await wait_until(lambda: routers_see(routers, old, [new, back]), within=30,
                         what=f"routers on {old}, two standbys up")
        before = uuid.uuid4()
        primary = await asyncpg.connect(local.dsn(old))
        try:
            await primary.execute(INSERT, before, "before")
        finally:
            await primary.close()

        async def on_both() -> bool:
            return (await has_row(local.dsn(new), before)
                    and await has_row(local.dsn(back), before))

        await wait_until(on_both, within=10, what="the row on both standbys")
        local.stop_node(back)
        pid = local.pid(old)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        async def promoted() -> bool:
            return len(await promotions(routers)) == 1

        await wait_until(promoted, within=20, what=f"{new} promoted")
        (record,) = await promotions(routers)
        assert record["new_primary"] == new
        assert [(f["replica"], f["outcome"]) for f in record["followers"]] == [
            (back, "unreachable")]
    # Every router that saw the promotion is gone. `back` comes back asking the dead `old`.
    local.start_node(back)
    conninfo, _ = await settings(local.dsn(back))
    assert dict(parse_conninfo(conninfo))["port"] == str(local.node(old).port)
    after = uuid.uuid4()
    primary = await asyncpg.connect(local.dsn(new))
    try:
        await primary.execute(INSERT, after, "after")
    finally:
        await primary.close()
    streaming = await receiver(local.dsn(back))
    assert streaming is None or streaming[1] != local.node(new).port, streaming

    with contextlib.ExitStack() as stack:
        routers = [stack.enter_context(start_router(c, local.state_dir / f"router-q{i}.toml",
                                                    SECRET))
                   for i, c in enumerate(configs)]

        async def streams_from_new() -> bool:
            return (await receiver(local.dsn(back)) == ("streaming", local.node(new).port)
                    and await has_row(local.dsn(back), after))

        await wait_until(streams_from_new, within=30,
                         what=f"{back} streaming from {new} and replaying its write")
        conninfo, _ = await settings(local.dsn(back))
        assert dict(parse_conninfo(conninfo))["port"] == str(local.node(new).port)
        reports = [(await heartbeat_report(p))["promoter"] for p in routers]
        assert [r["promotions"] for r in reports] == [[], []]  # they promoted nothing
        acted = [r["followers"].get("europe", []) for r in reports]
        assert sorted((f["replica"], f["outcome"]) for done in acted for f in done) == [
            (back, "repointed")], reports


async def test_a_standby_that_names_a_node_not_configured_is_left_alone(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """A standby whose primary_conninfo names an address router.toml does not (here
    `localhost` for the primary's 127.0.0.1: a person's choice) is not re-pointed by the
    reconciling router: it says so in its report and its log, and the setting stays."""
    local, base = scratch
    names = ("europe-1", "europe-2", "europe-3")
    for name in names:  # what the tests before left stopped
        if local.pid(name) is None:
            await asyncio.to_thread(local.rejoin, name)
    standbys = []
    for name in names:
        conn = await asyncpg.connect(local.dsn(name))
        try:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                standbys.append(name)
        finally:
            await conn.close()
    chosen = standbys[-1]
    conninfo, _ = await settings(local.dsn(chosen))
    pairs = dict(parse_conninfo(conninfo))
    assert pairs["host"] == "127.0.0.1"
    by_hand = format_conninfo([(k, "localhost" if k == "host" else v)
                               for k, v in parse_conninfo(conninfo)])

    async def set_conninfo(text: str) -> None:
        conn = await asyncpg.connect(local.dsn(chosen))
        try:
            await conn.execute(f"ALTER SYSTEM SET primary_conninfo = {sql_literal(text)}")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def reloaded() -> bool:
        return (await settings(local.dsn(chosen)))[0] == by_hand

    await set_conninfo(by_hand)
    try:
        await wait_until(reloaded, within=10, what=f"{chosen}'s conninfo reloaded")
        with contextlib.ExitStack() as stack:
            routers = [stack.enter_context(start_router(c, local.state_dir / f"router-l{i}.toml",
                                                        SECRET))
                       for i, c in enumerate(managed_configs(base)[:2])]

            async def looked_at() -> bool:
                reports = [(await heartbeat_report(p))["promoter"] for p in routers]
                return any(f["replica"] == chosen for r in reports
                           for f in r["followers"].get("europe", []))

            await wait_until(looked_at, within=30, what=f"a router looks at {chosen}")
            reports = [(await heartbeat_report(p))["promoter"] for p in routers]
            [found] = [f for r in reports for f in r["followers"].get("europe", [])
                       if f["replica"] == chosen]
            assert found["outcome"] == "left_alone", found
            assert "localhost" in found["detail"] and "not a node of its shard" in found["detail"]
            assert any(p.wait_for_output(f"standby {chosen} of europe: ", timeout=5)
                       for p in routers)
            assert (await settings(local.dsn(chosen)))[0] == by_hand
    finally:
        await set_conninfo(conninfo)


async def test_restarted_routers_promote_the_standby_when_the_promoted_primary_is_down(
    scratch: tuple[LocalCluster, Config],
) -> None:
    """After a managed failover (europe-1 killed, europe-2 promoted, europe-3 following it)
    the routers stop, europe-2 stops, and europe-1 comes back writable on its older timeline.
    Routers started again remember the shard's newest timeline and the node that was the
    primary on it (router/ha/memory.py): they fence europe-1, see europe-2 (their primary)
    down, and promote europe-3, which has every acknowledged write. Starting from
    router.toml's `primary` entry instead, they saw europe-1 up and promoted nothing; before
    the floor was kept, they wrote to europe-1."""
    local, base = scratch
    await arrange(local, "europe-1")
    configs = managed_configs(base)[:2]  # two of the three configured: a majority
    paths = [local.state_dir / f"router-m{i}.toml" for i in range(len(configs))]
    europe = base.shards["europe"].number

    def started(stack: contextlib.ExitStack) -> list[Any]:
        return [stack.enter_context(start_router(c, p, SECRET))
                for c, p in zip(configs, paths, strict=True)]

    async def primary_is(routers: list[Any], name: str) -> bool:
        return {(await topology(p))["shards"]["europe"]["primary"] for p in routers} == {name}

    acked = new_id(europe)
    with contextlib.ExitStack() as stack:
        routers = started(stack)
        await wait_until(lambda: routers_see(routers, "europe-1", ["europe-2", "europe-3"]),
                         within=30, what="routers on europe-1, two standbys up")
        local.stop_node("europe-1")  # immediate: as a crash
        await wait_until(lambda: primary_is(routers, "europe-2"), within=30,
                         what="europe-2 promoted")
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(INSERT, acked, "acked")

        async def on_europe_3() -> bool:
            return await has_row(local.dsn("europe-3"), acked)

        await wait_until(on_europe_3, within=20, what="europe-3 follows europe-2")
    local.stop_node("europe-2")
    local.start_node("europe-1")  # writable again, on the old timeline
    with contextlib.ExitStack() as stack:
        routers = started(stack)
        await wait_until(lambda: primary_is(routers, "europe-3"), within=45,
                         what="the restarted routers promote europe-3")
        after = new_id(europe)
        async with await client.connect(routers[0].dsn, token=TOKEN) as db:
            await db.execute(INSERT, after, "after")
        views = [(await topology(p))["shards"]["europe"] for p in routers]
        assert all(v["fenced"] == ["europe-1"] for v in views), views
    assert await has_row(local.dsn("europe-3"), acked)
    assert await has_row(local.dsn("europe-3"), after)
    assert not await has_row(local.dsn("europe-1"), after)
