"""Two-phase commit over links that fail at the worst moment (tests/support/faultproxy.py in
front of europe's primary, armed on the statement itself): a participant's link reset or
stalled at COMMIT PREPARED, before it reaches the shard or after, and the coordinator's at
its COMMIT (the decision). Whatever happens, once the link heals the transaction is committed
on every shard or on none, nothing stays prepared, and the client was told COMMIT, the
truth about a rollback, or that the outcome is unknown: never "rolled back" for a
transaction that committed. A router killed mid-commit: test_twophase_recovery.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import client
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.router_proc import TOKEN, RouterProcess, primary_through, running_router
from tests.support.twophase import INSERT, none_prepared, rows_of, tp_config, tp_primaries

SHIFT = 124  # this module's router: the session router's ports moved by this
# The coordinator's COMMIT, as asyncpg sends it (a simple Query message); a participant's
# COMMIT PREPARED carries its statement text.
COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"
COMMIT_PREPARED = b"COMMIT PREPARED '"
# The client's wait for its commit: phase two and the decision's read-back are bounded by the
# router's 5 s (twophase.PHASE_TWO_RETRY_SECONDS); more is a hang.
ANSWER_WITHIN = 15.0


@pytest.fixture(scope="module")
def europe_proxy(migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=600)
    with proxy.running_in_thread():
        yield proxy
    assert proxy.open_sockets() == []


@pytest.fixture(scope="module")
def links_router(migrated: Config, europe_proxy: TcpFaultProxy) -> Iterator[RouterProcess]:
    config = primary_through(tp_config(migrated, SHIFT, "tp-links"), "europe",
                             europe_proxy.port)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-tp-links.toml") as p:
        yield p


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    """Each shard's primary, reached around the proxy."""
    async with tp_primaries(migrated) as conns:
        yield conns


@pytest.fixture
async def tp(links_router: RouterProcess, europe_proxy: TcpFaultProxy,
             primaries: dict[str, asyncpg.Connection]) -> AsyncIterator[client.Client]:
    try:
        async with await client.connect(links_router.dsn, token=TOKEN) as c:
            yield c
    finally:
        europe_proxy.resume()


async def _write_both(tp: client.Client, first: tuple[uuid.UUID, str],
                      second: tuple[uuid.UUID, str]) -> str:
    """One transaction over two shards; the first shard written coordinates."""
    tx = tp.transaction()
    await tx.start()
    for item, region in (first, second):
        await tx.execute(INSERT, item, region, "linked")
    return await tx.commit()


async def _settled_everywhere(primaries: dict[str, asyncpg.Connection],
                              items: dict[uuid.UUID, str]) -> dict[uuid.UUID, int]:
    """Once nothing is prepared any more: how many shards hold each item (on its own)."""
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    found = {}
    for item, region in items.items():
        rows = await rows_of(primaries, item)
        assert all(n == 0 for r, n in rows.items() if r != region), rows
        found[item] = rows[region]
    return found


@pytest.mark.parametrize(("fault", "deliver"), [
    ("reset", False), ("reset", True), ("stall", False), ("stall", True)])
async def test_a_participant_link_lost_at_commit_prepared_still_commits_everywhere(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    fault: str, deliver: bool,
) -> None:
    """The decision is committed on the coordinator (asia) before COMMIT PREPARED goes to the
    participant (europe): the client is told COMMIT, in bounded time even while europe's
    link stays stalled (its COMMIT PREPARED is then left to the recovery sweeper), and once
    the link heals both rows are there and nothing is prepared."""
    asia, europe = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_PREPARED, fault, deliver=deliver)
    async with asyncio.timeout(ANSWER_WITHIN):
        status = await _write_both(tp, (asia, "asia"), (europe, "europe"))
    assert status == "COMMIT"
    assert europe_proxy.triggered()
    europe_proxy.resume()  # the link heals (a reset's new connections passed already)
    assert await _settled_everywhere(primaries, {asia: "asia", europe: "europe"}) == {
        asia: 1, europe: 1}


@pytest.mark.parametrize(("fault", "deliver"), [("reset", True), ("stall", True)])
async def test_a_coordinator_link_lost_after_its_commit_is_committed_or_unknown_never_rolled_back(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    fault: str, deliver: bool,
) -> None:
    """europe coordinates: its COMMIT, which carries the decision row, reaches it and the
    answer is lost (reset) or held (stall). The router reads the decision back on a fresh
    connection (found: COMMIT) or, when europe cannot be asked, answers that the outcome is
    unknown, in bounded time; once the link heals the transaction is committed everywhere."""
    europe, asia = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, fault, deliver=deliver)
    outcome: str
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            outcome = await _write_both(tp, (europe, "europe"), (asia, "asia"))
    except client.TransactionOutcomeUnknownError as exc:
        outcome = "unknown"
        assert "europe" in str(exc)
    assert europe_proxy.triggered()
    assert outcome == ("COMMIT" if fault == "reset" else "unknown")
    europe_proxy.resume()
    assert await _settled_everywhere(primaries, {europe: "europe", asia: "asia"}) == {
        europe: 1, asia: 1}


async def test_a_coordinator_link_lost_before_its_commit_rolls_back_everywhere_and_says_so(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
) -> None:
    """The contrast: the decision never reached europe (reset before its COMMIT), so its
    branch rolled back there; the router records the abort, rolls the prepared asia branch
    back and says so. A true "rolled back"."""
    europe, asia = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "reset", deliver=False)
    with pytest.raises(client.GeorouteError) as err:
        async with asyncio.timeout(ANSWER_WITHIN):
            await _write_both(tp, (europe, "europe"), (asia, "asia"))
    assert europe_proxy.triggered()
    assert "rolled back on every shard" in str(err.value), err.value
    assert await _settled_everywhere(primaries, {europe: "europe", asia: "asia"}) == {
        europe: 0, asia: 0}


@pytest.mark.parametrize("deliver", [False, True])
async def test_a_participant_link_stalled_at_prepare_rolls_back_everywhere_in_bounded_time(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    deliver: bool,
) -> None:
    """Phase one: europe's PREPARE TRANSACTION gets no answer (held before it reaches europe,
    or after it prepared there). Nothing is decided yet, so the router gives up at the
    phase-one limit (half of router.twophase_grace_seconds), rolls asia back and says so;
    once the link heals, what europe prepared is rolled back too (presumed abort)."""
    asia, europe = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(b"PREPARE TRANSACTION '", "stall", deliver=deliver)
    with pytest.raises(client.GeorouteError) as err:
        async with asyncio.timeout(ANSWER_WITHIN):
            await _write_both(tp, (asia, "asia"), (europe, "europe"))
    assert europe_proxy.triggered()
    assert "rolled back on every shard" in str(err.value) and "europe" in str(err.value)
    europe_proxy.resume()
    assert await _settled_everywhere(primaries, {asia: "asia", europe: "europe"}) == {
        asia: 0, europe: 0}
