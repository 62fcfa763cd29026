"""Commits over links that fail (found by an audit; each failed before its fix): the fault
proxy sits in front of europe's primary (as in test_twophase_links.py) and resets or stalls
its link.

- A one-shard COMMIT (a transaction pinned to one shard, or one over shards that wrote one)
  whose answer is lost after it applied says the outcome is unknown (it said NODE_UNAVAILABLE,
  which reads as nothing applied); one whose link stalls is answered within
  COMMIT_ANSWER_SECONDS (it was not answered while the stall lasted).
- Every wait of the two-phase commit on a stalled link is bounded: the coordinator's ROLLBACK
  after phase one gave up on its decision INSERT; ROLLBACK PREPARED (own connection, or an
  idle pooled one); a reader's COMMIT during phase one (which then rolled the writers back);
  the decision's read-back on an idle pooled connection. (The recovery sweep's is in
  test_recovery_stall.py: it needs a cluster that no other router sweeps.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import client
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.router_proc import TOKEN, RouterProcess, primary_through, running_router
from tests.support.twophase import (
    INSERT,
    none_prepared,
    rows_of,
    tp_config,
    tp_primaries,
    warm_pool,
)

SHIFT = 233
COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"
DECISION_INSERT = b"INSERT INTO georoute_tx_decisions"
ANSWER_WITHIN = 20.0  # the two-phase path answers within ~5 s; this is "a hang"


@pytest.fixture(scope="module")
def europe_proxy(migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=600)
    with proxy.running_in_thread():
        yield proxy


@pytest.fixture(scope="module")
def links_router(migrated: Config, europe_proxy: TcpFaultProxy) -> Iterator[RouterProcess]:
    config = primary_through(tp_config(migrated, SHIFT, "commit-links"), "europe",
                             europe_proxy.port)
    with running_router(config, Path(migrated.cluster.state_dir) / "router-commit-links.toml") as p:
        yield p


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[dict[str, asyncpg.Connection]]:
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


async def _commit_under_fault(
    tp: client.Client, proxy: TcpFaultProxy, statements: Sequence[tuple[Any, ...]], *,
    shard: str | None,
) -> tuple[object, float]:
    """Run `statements` in a transaction (pinned to `shard`, or over shards) and commit it,
    the link's fault set beforehand: what the client was told ("COMMIT", its error, or "no
    answer" within ANSWER_WITHIN) and how long it took. The link is then healed, and the
    fault must have struck."""
    started = time.monotonic()
    told: object
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            tx = tp.transaction(shard=shard)
            await tx.start()
            for sql, *params in statements:
                await tx.execute(sql, *params)
            told = await tx.commit()
    except TimeoutError:
        told = "no answer"
    except client.GeorouteError as exc:
        told = exc
    waited = time.monotonic() - started
    proxy.resume()
    assert proxy.triggered()
    return told, waited


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "over-shards-one-writer"])
async def test_a_one_shard_commit_whose_answer_is_lost_says_the_outcome_is_unknown(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    pinned: bool,
) -> None:
    """europe's link is reset right after the COMMIT reached it: the row IS committed. The
    client must hear COMMIT or "outcome unknown" (TransactionOutcomeUnknownError, as the
    two-phase path says it), not NODE_UNAVAILABLE (4001: "no healthy node for the target
    now", documented retryable), which reads as nothing applied."""
    item = uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "reset", deliver=True)
    told, _ = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, item, "europe", "links")], shard="europe" if pinned else None)
    assert (await rows_of(primaries, item))["europe"] == 1  # it committed
    assert told == "COMMIT" or isinstance(told, client.TransactionOutcomeUnknownError), (
        f"a committed transaction was answered {type(told).__name__}: {told!r} "
        f"(code {getattr(told, 'code', None)})")


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "over-shards-one-writer"])
async def test_a_one_shard_commit_whose_link_stalls_is_answered_in_bounded_time(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    pinned: bool,
) -> None:
    """A transaction over shards that wrote europe only commits in one phase: its COMMIT
    reaches europe and the answer is held (stall). The two-phase path bounds the decision's
    wait (5 s, then it reads it back or says unknown); the one-phase path must answer too,
    within ANSWER_WITHIN, never hang on the link."""
    item = uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "stall", deliver=True)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, item, "europe", "links")], shard="europe" if pinned else None)
    assert told != "no answer", f"no answer to COMMIT within {waited:.1f} s (link stalled)"


async def test_a_coordinator_link_stalled_at_the_decision_insert_rolls_back_in_bounded_time(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    links_router: RouterProcess,
) -> None:
    """europe coordinates (it wrote first); its link stalls as the decision row's INSERT
    reaches it (phase one). The router gives up on phase one at half the grace period and
    must answer "rolled back" within a bound; once the link heals, neither shard holds a row
    and nothing is prepared."""
    europe, asia = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(DECISION_INSERT, "stall", deliver=True)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, europe, "europe", "links"),
        (INSERT, asia, "asia", "links")], shard=None)
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    found = await rows_of(primaries, europe)
    asia_rows = (await rows_of(primaries, asia))["asia"]
    assert told != "no answer", (
        f"no answer to COMMIT within {waited:.1f} s; once healed: europe {found['europe']}, "
        f"asia {asia_rows}; router said:\n" + "".join(links_router.output[-15:]))
    assert isinstance(told, client.GeorouteError), told
    assert "rolled back" in str(told), told
    assert found["europe"] == 0 and asia_rows == 0, (found, asia_rows)


async def test_a_refused_decision_whose_participant_link_stalls_is_answered_in_bounded_time(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    links_router: RouterProcess,
) -> None:
    """asia coordinates and refuses its COMMIT (a deferred check, GR900); europe had
    prepared. Its ROLLBACK PREPARED is sent on europe's own connection, whose link stalls:
    the router must still answer "rolled back" within a bound (the sweep rolls europe back
    once it can: no decision row), not wait for the link to heal."""
    asia, europe = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(b"ROLLBACK PREPARED", "stall", deliver=False)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, asia, "asia", "refuse"),
        (INSERT, europe, "europe", "links")], shard=None)
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    rows = {**await rows_of(primaries, asia), "europe": (await rows_of(primaries, europe))["europe"]}
    assert told != "no answer", (
        f"no answer to COMMIT within {waited:.1f} s; once healed: {rows}; router said:\n"
        + "".join(links_router.output[-6:]))
    assert isinstance(told, client.GeorouteError) and "rolled back" in str(told), told
    assert rows["asia"] == 0 and rows["europe"] == 0, rows


async def test_a_reader_whose_link_stalls_at_its_commit_does_not_hold_a_two_phase_commit(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    links_router: RouterProcess,
) -> None:
    """asia and north_america write, europe only reads (not serializable: a reader's COMMIT
    changes nothing, README). europe's link stalls at its COMMIT, sent with phase one. The
    two writers' commit must be answered within a bound; it neither waits for the reader
    nor fails because of it."""
    asia, na = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "stall", deliver=False)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, asia, "asia", "links"),
        (INSERT, na, "north_america", "links"),
        ("SELECT count(*) FROM tp_items WHERE region = 'europe' AND item_id = $1", uuid.uuid4())], shard=None)
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    rows = {"asia": (await rows_of(primaries, asia))["asia"],
            "north_america": (await rows_of(primaries, na))["north_america"]}
    assert told == "COMMIT", (
        f"told {told!r} after {waited:.1f} s; once healed: {rows}; router said:\n"
        + "".join(links_router.output[-4:]))
    assert rows == {"asia": 1, "north_america": 1}, rows


async def test_a_lost_decision_read_back_on_an_idle_pooled_connection_is_bounded(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    links_router: RouterProcess,
) -> None:
    """As test_twophase_links' coordinator case (europe coordinates; its COMMIT reaches it and
    the link stalls), but europe's pool holds idle connections first (three pinned
    transactions committed at once). The decision's read-back (twophase._read_back) takes
    one of them, over the same stalled link: the client must still hear "outcome unknown"
    within a bound (README: "only if that shard cannot be asked for 5 s")."""
    warm = [tp.transaction(shard="europe") for _ in range(3)]
    for tx in warm:
        await tx.start()
    for tx in warm:
        await tx.fetch("SELECT 1")
    for tx in warm:
        await tx.commit()
    europe, asia = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(COMMIT_MESSAGE, "stall", deliver=True)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, europe, "europe", "links"),
        (INSERT, asia, "asia", "links")], shard=None)
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    rows = {"europe": (await rows_of(primaries, europe))["europe"],
            "asia": (await rows_of(primaries, asia))["asia"]}
    assert rows == {"europe": 1, "asia": 1}, rows
    await wait_until(lambda: _said_commit(links_router), within=10, what="the Commit's log line")
    assert told == "COMMIT" or isinstance(told, client.TransactionOutcomeUnknownError), (
        f"told {told!r} after {waited:.1f} s; router said:\n"
        + "".join([line for line in links_router.output if "Commit" in line][-1:]))


async def _said_commit(router: RouterProcess) -> bool:
    return any("request Commit" in line for line in router.output)


async def test_a_participant_stalled_at_prepare_with_a_warm_pool_is_answered_in_bounded_time(
    tp: client.Client, europe_proxy: TcpFaultProxy, primaries: dict[str, asyncpg.Connection],
    links_router: RouterProcess,
) -> None:
    """test_twophase_links' "participant link stalled at prepare ... in bounded time", with
    idle pooled connections to europe first: the ROLLBACK PREPARED for the lost participant
    goes to a fresh connection from the pool (twophase._finish), an idle one over the same
    stalled link, with no bound. The client must hear "rolled back" within a bound."""
    await warm_pool(tp, "europe")
    asia, europe = uuid.uuid4(), uuid.uuid4()
    europe_proxy.fault_on(b"PREPARE TRANSACTION", "stall", deliver=True)
    told, waited = await _commit_under_fault(tp, europe_proxy, [
        (INSERT, asia, "asia", "links"),
        (INSERT, europe, "europe", "links")], shard=None)
    await wait_until(lambda: none_prepared(primaries), within=30,
                     what="every prepared branch to be settled")
    rows = {"asia": (await rows_of(primaries, asia))["asia"],
            "europe": (await rows_of(primaries, europe))["europe"]}
    await wait_until(lambda: _said_commit(links_router), within=10, what="the Commit's log line")
    assert told != "no answer", (
        f"no answer within {waited:.1f} s; once healed: {rows}; router said:\n"
        + "".join([line for line in links_router.output if "Commit" in line][-1:]))
    assert isinstance(told, client.GeorouteError) and "rolled back" in str(told), told
    assert rows == {"asia": 0, "europe": 0}, rows
