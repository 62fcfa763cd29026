"""Two-phase commit over links that fail at the worst moment (tests/support/faultproxy.py in
front of europe's primary, armed on the statement itself): a participant's link reset or
stalled at COMMIT PREPARED, before it reaches the shard or after, and the coordinator's at
its COMMIT (the decision). Whatever happens, once the link heals the transaction is committed
on every shard or on none, nothing stays prepared, and the client was told COMMIT, the
truth about a rollback, or that the outcome is unknown: never "rolled back" for a
transaction that committed. A router killed mid-commit: test_twophase_recovery.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

import client
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.reliability import record
from tests.support.router_proc import TOKEN, RouterProcess, primary_through, running_router
from tests.support.twophase import (
    INSERT,
    none_prepared,
    prepared,
    rows_of,
    tp_config,
    tp_primaries,
)

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


def _link(fault: str, deliver: bool, marker: str) -> str:
    where = "after it reached europe" if deliver else "before it reached europe"
    return f"{'reset' if fault == 'reset' else 'stalled'} at {marker}, {where}"


async def _record(primaries: dict[str, asyncpg.Connection], fault: str, how: str, told: str,
                  answered_after: float, found: dict[uuid.UUID, int],
                  items: dict[uuid.UUID, str], healed_at: float) -> None:
    """The report's row for one case (tests/support/reliability.py): what the client was told
    and when, and what every shard held once its prepared branches were settled."""
    settled_after = time.monotonic() - healed_at
    record(f"two-phase commit: {fault}",
           f"a transaction over asia and europe; the fault proxy in front of europe's primary, "
           f"armed on the statement itself: {how}",
           None, client_told=told, answered_after_s=round(answered_after, 2),
           settled_after_heal_s=round(settled_after, 2),
           rows_after={region: found[item] for item, region in items.items()},
           prepared_left=sum(len(gids) for gids in (await prepared(primaries)).values()))


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
    started = time.monotonic()
    async with asyncio.timeout(ANSWER_WITHIN):
        status = await _write_both(tp, (asia, "asia"), (europe, "europe"))
    answered = time.monotonic() - started
    assert status == "COMMIT"
    assert europe_proxy.triggered()
    europe_proxy.resume()  # the link heals (a reset's new connections passed already)
    healed = time.monotonic()
    items = {asia: "asia", europe: "europe"}
    found = await _settled_everywhere(primaries, items)
    assert found == {asia: 1, europe: 1}
    await _record(primaries, f"a participant's link {_link(fault, deliver, 'COMMIT PREPARED')}",
                  f"asia coordinates; europe's link "
                  f"{_link(fault, deliver, 'its COMMIT PREPARED')}, then healed",
                  status, answered, found, items, healed)


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
    started = time.monotonic()
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            outcome = await _write_both(tp, (europe, "europe"), (asia, "asia"))
    except client.TransactionOutcomeUnknownError as exc:
        outcome = "unknown"
        assert "europe" in str(exc)
    answered = time.monotonic() - started
    assert europe_proxy.triggered()
    assert outcome == ("COMMIT" if fault == "reset" else "unknown")
    europe_proxy.resume()
    healed = time.monotonic()
    items = {europe: "europe", asia: "asia"}
    found = await _settled_everywhere(primaries, items)
    assert found == {europe: 1, asia: 1}
    await _record(primaries,
                  f"the coordinator's link {_link(fault, deliver, 'its COMMIT (the decision)')}",
                  f"europe coordinates; its link {_link(fault, deliver, 'its COMMIT')}, "
                  "then healed", "outcome unknown" if outcome == "unknown" else outcome,
                  answered, found, items, healed)


async def test_a_coordinator_link_lost_before_its_commit_rolls_back_everywhere_and_says_so(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
) -> None:
    """The contrast: the decision never reached europe (reset before its COMMIT), so its
    branch rolled back there; the router records the abort, rolls the prepared asia branch
    back and says so. A true "rolled back"."""
    europe, asia = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "reset", deliver=False)
    started = time.monotonic()
    with pytest.raises(client.GeorouteError) as err:
        async with asyncio.timeout(ANSWER_WITHIN):
            await _write_both(tp, (europe, "europe"), (asia, "asia"))
    answered = time.monotonic() - started
    assert europe_proxy.triggered()
    assert "rolled back on every shard" in str(err.value), err.value
    healed = time.monotonic()  # a reset: new connections pass at once
    items = {europe: "europe", asia: "asia"}
    found = await _settled_everywhere(primaries, items)
    assert found == {europe: 0, asia: 0}
    await _record(primaries,
                  f"the coordinator's link {_link('reset', False, 'its COMMIT (the decision)')}",
                  f"europe coordinates; its link {_link('reset', False, 'its COMMIT')}",
                  f"rolled back ({type(err.value).__name__})", answered, found, items, healed)


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
    started = time.monotonic()
    with pytest.raises(client.GeorouteError) as err:
        async with asyncio.timeout(ANSWER_WITHIN):
            await _write_both(tp, (asia, "asia"), (europe, "europe"))
    answered = time.monotonic() - started
    assert europe_proxy.triggered()
    assert "rolled back on every shard" in str(err.value) and "europe" in str(err.value)
    europe_proxy.resume()
    healed = time.monotonic()
    items = {asia: "asia", europe: "europe"}
    found = await _settled_everywhere(primaries, items)
    assert found == {asia: 0, europe: 0}
    await _record(primaries,
                  f"a participant's link {_link('stall', deliver, 'PREPARE TRANSACTION')} "
                  "(phase one)",
                  f"asia coordinates; europe's link "
                  f"{_link('stall', deliver, 'its PREPARE TRANSACTION')}, then healed",
                  f"rolled back ({type(err.value).__name__})", answered, found, items, healed)
