"""Audit reproduction: a keyed write (idempotency key) whose COMMIT's answer is held by a
stalled link (a primary that hangs: its kernel still acknowledges every byte, so neither
TCP_USER_TIMEOUT nor keepalives end the connection). The one-shard and two-phase COMMITs
are awaited 5 s at most (COMMIT_ANSWER_SECONDS, tests/integration/test_commit_links.py); the
keyed path's COMMIT (asyncpg's transaction block in Executor._idempotent) is not bounded, so
the request was never answered while the stall lasted. Now it is bounded as they are
(router/engine/outcome.py bounded_transaction): the client is told NODE_UNAVAILABLE, and its
retry with the same key applies the write once at most."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from protocol import Hints, Query, QueryKind
from protocol.errors import ErrorCode
from router.config import Config
from tests.integration.conftest import wait_until
from tests.support.faultproxy import TcpFaultProxy
from tests.support.router_proc import RouterProcess, primary_through, raw_request, running_router
from tests.support.twophase import INSERT, Primaries, rows_of, tp_config, tp_primaries

SHIFT = 184
KEYED_COMMIT = b"COMMIT;"  # what asyncpg's transaction block sends at its end
ANSWER_WITHIN = 20.0  # every other COMMIT path answers within ~5 s


@pytest.fixture(scope="module")
def europe_proxy(migrated: Config) -> Iterator[TcpFaultProxy]:
    primary = migrated.shards["europe"].primary
    proxy = TcpFaultProxy((primary.host, primary.port), lifetime=300)
    with proxy.running_in_thread():
        yield proxy


@pytest.fixture(scope="module")
def keyed_router(migrated: Config, europe_proxy: TcpFaultProxy) -> Iterator[RouterProcess]:
    config = primary_through(tp_config(migrated, SHIFT, "audit-keyed-links"), "europe",
                             europe_proxy.port)
    # No abort presumed by its recovery sweep: one it records (of another test's leftover
    # prepared branch) ends with "COMMIT;" too, and would fire the fault meant for the write
    # (it did, in the full suite: the write's own statements then stalled).
    config = replace(config, router=replace(config.router, twophase_grace_seconds=3600.0))
    with running_router(config, Path(migrated.cluster.state_dir) / "router-audit-keyed.toml") as p:
        yield p


@pytest.fixture
async def primaries(migrated: Config) -> AsyncIterator[Primaries]:
    async with tp_primaries(migrated) as conns:
        yield conns


async def test_a_keyed_write_whose_commit_link_stalls_is_answered_in_bounded_time(
    keyed_router: RouterProcess, europe_proxy: TcpFaultProxy, primaries: Primaries,
) -> None:
    item, key = uuid.uuid4(), f"audit-{uuid.uuid4()}"
    europe_proxy.fault_on(KEYED_COMMIT, "stall", deliver=True)
    query = Query(2, INSERT, [item, "europe", "keyed"], QueryKind.EXECUTE,
                  Hints(idempotency_key=key))
    started = time.monotonic()
    try:
        reply: object = await raw_request(keyed_router.config.router.listen_port, query,
                                          "audit-keyed", within=ANSWER_WITHIN)
    except TimeoutError:
        reply = "no answer"
    waited = time.monotonic() - started
    triggered = europe_proxy.triggered()
    europe_proxy.resume()
    assert triggered
    committed = (await rows_of(primaries, item))["europe"]
    assert reply != "no answer", (
        f"no answer to a keyed write within {waited:.1f} s while its COMMIT's link stalled "
        f"(the row is committed: {committed}); router said:\n"
        + "".join(keyed_router.output[-20:]))
    # A retryable error (the key makes a retry safe), and the retry applies it once at most.
    assert getattr(reply, "code", None) == ErrorCode.NODE_UNAVAILABLE, reply

    async def retried() -> bool:  # once the monitor sees europe's primary up again
        again = await raw_request(keyed_router.config.router.listen_port, query,
                                  "audit-keyed", within=ANSWER_WITHIN)
        return getattr(again, "status", None) == "INSERT 0 1"

    await wait_until(retried, within=20, what="the keyed write's retry answered")
    assert (await rows_of(primaries, item))["europe"] == 1


async def test_the_keyed_router_serves_once_the_link_heals(
    keyed_router: RouterProcess, europe_proxy: TcpFaultProxy, primaries: Primaries,
) -> None:
    """A control for the test above: without a fault, the keyed write through the proxy is
    answered and applied once (so the test above measures the stall's doing)."""
    europe_proxy.resume()
    item, key = uuid.uuid4(), f"audit-{uuid.uuid4()}"
    query = Query(2, INSERT, [item, "europe", "keyed"], QueryKind.EXECUTE,
                  Hints(idempotency_key=key))
    for _ in range(2):  # the retry gets the stored reply, and applies nothing
        reply = await raw_request(keyed_router.config.router.listen_port, query,
                                  "audit-keyed", within=ANSWER_WITHIN)
        assert getattr(reply, "status", None) == "INSERT 0 1", reply
    assert (await rows_of(primaries, item))["europe"] == 1
