"""A stopping node's drain (router/server/drain.py) with stand-in connections and pipelines: it
waits for request tasks, then busy pipelines, then open transactions, each on an event; a
transaction that ends (or a client that goes) wakes it at once, nothing makes it look again
meanwhile, and at the deadline the tasks still running are cancelled. No database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from router.engine.session import Session
from router.server.drain import drain


@dataclass(eq=False)
class FakeClient:
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    session: Session = field(default_factory=Session)


class Clients(list[FakeClient]):
    """The node's connections; counts how often the drain looks at them."""

    looks = 0

    def __iter__(self) -> Iterator[FakeClient]:
        self.looks += 1
        return super().__iter__()


class FakePipeline:
    def __init__(self) -> None:
        self.in_flight = 0
        self.idle = asyncio.Event()

    async def drain(self, grace: float) -> None:
        if self.in_flight:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), grace)
            except TimeoutError:
                pass

    def finish(self) -> None:
        self.in_flight = 0
        self.idle.set()


def _open_transaction(session: Session) -> Any:
    return session.open("europe", object(), object())  # type: ignore[arg-type]


async def test_nothing_in_flight_returns_at_once() -> None:
    clients = Clients([FakeClient(), FakeClient()])
    async with asyncio.timeout(1):
        await drain(clients, [FakePipeline()], asyncio.Event(), grace=30)
    assert clients.looks == 2  # once for tasks, once for transactions


async def test_it_waits_for_tasks_then_pipelines_then_a_transactions_end() -> None:
    client = FakeClient()
    clients = Clients([client])
    pipeline = FakePipeline()
    ended = asyncio.Event()
    release_task = asyncio.Event()
    task = asyncio.ensure_future(release_task.wait())
    client.tasks.add(task)  # type: ignore[arg-type]
    pipeline.in_flight = 1
    tx = _open_transaction(client.session)
    draining = asyncio.ensure_future(drain(clients, [pipeline], ended, grace=30))

    async def step() -> None:  # a few loop turns, bounded: the drain reacts in one or two
        for _ in range(5):
            await asyncio.sleep(0)

    await step()
    assert not draining.done()
    release_task.set()
    client.tasks.clear()
    await step()
    assert not draining.done()  # the pipeline is busy
    pipeline.finish()
    await step()
    assert not draining.done()  # a transaction is open
    client.session.transactions.pop(tx.id)  # its client committed
    ended.set()
    async with asyncio.timeout(1):
        await draining


async def test_with_only_a_transaction_open_it_waits_without_looking_again() -> None:
    """Until the deadline (here 0.3 s) nothing ends: the drain looks at the connections when
    it starts and at the deadline, never in between (a poll every 50 ms would look 6 times)."""
    client = FakeClient()
    clients = Clients([client])
    _open_transaction(client.session)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(5):
        await drain(clients, [], asyncio.Event(), grace=0.3)
    assert loop.time() - started >= 0.3
    assert clients.looks == 4  # twice at the start, twice at the deadline


async def test_a_client_that_goes_wakes_the_drain() -> None:
    client = FakeClient()
    clients = Clients([client])
    _open_transaction(client.session)
    ended = asyncio.Event()
    draining = asyncio.ensure_future(drain(clients, [], ended, grace=30))
    for _ in range(5):
        await asyncio.sleep(0)
    clients.remove(client)  # what RequestHandler.closed does, then it sets `ended`
    ended.set()
    async with asyncio.timeout(1):
        await draining


async def test_tasks_still_running_at_the_deadline_are_cancelled() -> None:
    client = FakeClient()
    never = asyncio.ensure_future(asyncio.Event().wait())
    client.tasks.add(never)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await drain(Clients([client]), [], asyncio.Event(), grace=0.05)
    await asyncio.sleep(0)
    assert never.cancelled()
