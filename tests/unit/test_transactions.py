"""The transaction state machine (router/engine/transactions.py) through its ports, with
stand-in backend connections: the per-client limit holds under concurrent begins, a batch
inside a transaction is not split by a commit, an idle transaction is rolled back by the router
itself, a statement whose id or function argument names another shard is refused, and every
way a transaction ends gives its connection back and says it ended. Routing uses the real
router.toml and classifier; no database and no Executor are involved."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.messages import Hints
from router.config import load_config
from router.core.routing import CrossShardError, UnknownShardError, shard_of_value
from router.engine.classifier import Classifier
from router.engine.errors import CommitOutcomeUnknown
from router.engine.session import Session, Transaction, TransactionError
from router.engine.transactions import Transactions
from tests.support.ids import new_id

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "router.toml")


class FakeConn:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def execute(self, sql: str) -> None:
        await asyncio.sleep(0)  # a turn of the loop, as a round trip would take
        self.log.append(sql)


class FakeBackend:
    def __init__(self, log: list[str]) -> None:
        self.conn = FakeConn(log)
        self.dirty = False

    async def run(self, sql: str, params: Any) -> tuple[list[str], list[Any], str]:
        await asyncio.sleep(0)
        self.conn.log.append(sql)
        return [], [], "UPDATE 1"


class FakePool:
    """Where the ports give connections back (and the idle-rollback counter a pool keeps)."""

    def __init__(self) -> None:
        self.released: list[bool] = []  # broken?
        self.idle_rollbacks = 0


@dataclasses.dataclass
class FakeNode:
    name: str
    pool: FakePool


@dataclasses.dataclass
class Ports:
    """The engine as Transactions sees it: each port records how it was used."""

    log: list[str]
    pool: FakePool
    acquire_yields: bool = True
    acquired: list[str] = dataclasses.field(default_factory=list)  # node names
    tokens: list[str] = dataclasses.field(default_factory=list)  # shards
    ends: int = 0

    def primary(self, shard: str) -> FakeNode:
        return FakeNode(f"{shard}-node1", self.pool)

    def shard_for_key(self, key: Any) -> str:
        shard = shard_of_value(key, CONFIG)
        if shard is None:
            raise UnknownShardError(f"shard_key {key!r} names no shard")
        return shard

    async def acquire(self, node: FakeNode) -> FakeBackend:
        if self.acquire_yields:  # a connection opened; else an idle one, handed over at once
            await asyncio.sleep(0)
        self.acquired.append(node.name)
        return FakeBackend(self.log)

    def release(self, node: FakeNode, backend: FakeBackend, broken: bool) -> None:
        self.pool.released.append(broken)

    async def token(self, session: Session, shard: str) -> str:
        self.tokens.append(shard)
        return f"{shard}:1"

    def ended(self) -> None:
        self.ends += 1


def _with_ports(idle_timeout: float = 60.0, acquire_yields: bool = True
                ) -> tuple[Transactions, Ports]:
    router = dataclasses.replace(CONFIG.router, transaction_idle_timeout_seconds=idle_timeout)
    database = dataclasses.replace(CONFIG.database, pool_max_size=4)  # 2 per client
    config = dataclasses.replace(CONFIG, router=router, database=database)
    ports = Ports([], FakePool(), acquire_yields)
    classifier = Classifier(config.tables, config.router.read_only_functions,
                            sharded_functions=config.router.sharded_functions)
    # Fakes in the engine's place: what Transactions uses of a node and a backend, not
    # their classes.
    transactions = Transactions(
        config, classifier, primary=ports.primary,  # type: ignore[arg-type]
        shard_for_key=ports.shard_for_key,
        acquire=ports.acquire, release=ports.release,  # type: ignore[arg-type]
        token=ports.token, ended=ports.ended,
    )
    return transactions, ports


def _transactions(idle_timeout: float = 60.0, acquire_yields: bool = True
                  ) -> tuple[Transactions, list[str], FakePool]:
    transactions, ports = _with_ports(idle_timeout, acquire_yields)
    return transactions, ports.log, ports.pool


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("acquire_yields", [True, False])
async def test_concurrent_begins_cannot_pass_the_per_client_limit(acquire_yields: bool) -> None:
    transactions, _, _ = _transactions(acquire_yields=acquire_yields)
    session = Session()
    results = await asyncio.gather(
        *(transactions.begin(session, Hints(shard="europe"), None, False) for _ in range(10)),
        return_exceptions=True,
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, TransactionError)]
    assert len(opened) == 2 and len(refused) == 8  # pool_max_size 4 // 2
    assert {r.code for r in refused} == {ErrorCode.TOO_MANY_TRANSACTIONS}
    assert session.opening == 0


async def test_a_batch_in_a_transaction_is_not_split_by_a_commit() -> None:
    transactions, log, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    batch = [(f"UPDATE users SET city = 'c{i}' WHERE user_id = $1", [new_id(CONFIG.shards["europe"].number)])
             for i in (1, 2)]
    results = await asyncio.gather(transactions.statements(session, tx, batch, Hints()),
                                   transactions.commit(session, tx.id))
    assert results[0].status == "UPDATE 1"
    assert log == ["BEGIN", batch[0][0], batch[1][0], "COMMIT"]


async def test_an_idle_transaction_is_rolled_back_and_its_connection_returned() -> None:
    transactions, log, pool = _transactions(idle_timeout=0.05)
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    await transactions.statement(session, tx, "SELECT 1", [], Hints())
    await _until(lambda: log[-1:] == ["ROLLBACK"])
    assert pool.released == [False] and not session.transactions
    assert pool.idle_rollbacks == 1
    with pytest.raises(TransactionError, match="transaction_idle_timeout") as info:
        await transactions.statement(session, tx, "SELECT 1", [], Hints())
    assert info.value.code is ErrorCode.TRANSACTION_ABORTED
    with pytest.raises(TransactionError, match="sent nothing"):
        await transactions.commit(session, tx.id)


async def test_a_busy_transaction_is_not_rolled_back_for_idleness() -> None:
    transactions, log, _ = _transactions(idle_timeout=0.05)
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    deadline = time.monotonic() + 0.25  # five idle timeouts; statements back to back
    while time.monotonic() < deadline:
        await transactions.statement(session, tx, "SELECT 1", [], Hints())
    await transactions.commit(session, tx.id)
    assert "ROLLBACK" not in log and log[-1] == "COMMIT"


@pytest.mark.parametrize("sql", [
    "UPDATE users SET city = 'x' WHERE user_id = $1",  # a shard key
    "INSERT INTO enrollments (user_id, course_id) VALUES ($1, $1)",  # a row written
    "SELECT enroll($1, $1)",  # a sharded function's argument
])
async def test_a_statement_for_another_shard_is_refused_inside_a_transaction(sql: str) -> None:
    transactions, log, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    asia = new_id(CONFIG.shards["asia"].number)
    with pytest.raises(CrossShardError, match="asia"):
        await transactions.statement(session, tx, sql, [asia], Hints())
    europe = new_id(CONFIG.shards["europe"].number)
    await transactions.statement(session, tx, sql, [europe], Hints())
    await transactions.statement(session, tx, "SELECT 1", [], Hints())  # no key: runs there
    assert log == ["BEGIN", sql, "SELECT 1"]


async def test_a_transaction_cannot_move_a_row_to_another_shard() -> None:
    transactions, log, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    move = "UPDATE users SET home_region = $1 WHERE email = 'a@example.com'"
    with pytest.raises(CrossShardError, match="from shard europe to asia"):
        await transactions.statement(session, tx, move, ["asia"], Hints())
    await transactions.statement(session, tx, move, ["europe"], Hints())
    assert log == ["BEGIN", move]


async def test_a_statement_waiting_for_the_parser_keeps_its_transaction_open() -> None:
    """A long text is parsed on the parser thread (here for longer than the idle timeout):
    its client is not idle meanwhile."""
    transactions, log, _ = _transactions(idle_timeout=0.05)
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    deep = "SELECT " + "+".join(["1"] * 30_000)  # about a second to parse
    await transactions.statement(session, tx, deep, [], Hints())
    await transactions.commit(session, tx.id)
    assert log == ["BEGIN", deep, "COMMIT"]


@pytest.mark.parametrize("hint", ["europe", "asia"])
async def test_a_hint_inside_a_transaction_does_not_silence_the_keys(hint: str) -> None:
    """A statement's own keys are checked against the transaction's shard, hint or not (a
    hint of the transaction's own shard once returned before the keys were looked at)."""
    transactions, log, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    asia = new_id(CONFIG.shards["asia"].number)
    for sql in ("SELECT * FROM users WHERE user_id = $1", "SELECT enroll($1, $1)"):
        with pytest.raises(CrossShardError, match="asia"):
            await transactions.statement(session, tx, sql, [asia], Hints(shard=hint))
    assert log == ["BEGIN"]


# ---- through the ports: what Transactions asks of the engine -------------------------------


async def test_begin_by_shard_key_pins_that_shards_primary_and_a_write_gets_its_token() -> None:
    transactions, ports = _with_ports()
    session = Session()
    tx = await transactions.begin(session, Hints(shard_key="asia"), None, False)
    assert isinstance(tx, Transaction)  # one shard named: no two-phase commit
    assert (tx.shard, tx.node.name, ports.acquired) == ("asia", "asia-node1", ["asia-node1"])
    asia = new_id(CONFIG.shards["asia"].number)
    await transactions.statement(session, tx, "UPDATE users SET city = 'x' WHERE user_id = $1",
                                 [asia], Hints())
    outcome = await transactions.commit(session, tx.id)
    assert (outcome.status, outcome.ryw_token, ports.tokens) == ("COMMIT", "asia:1", ["asia"])
    assert ports.pool.released == [False]
    read = await transactions.begin(session, Hints(shard="asia"), None, True)
    await transactions.statement(session, read, "SELECT 1", [], Hints())
    outcome = await transactions.commit(session, read.id)
    assert outcome.ryw_token is None and ports.tokens == ["asia"]  # nothing written: no token


async def test_an_unknown_shard_key_opens_nothing() -> None:
    transactions, ports = _with_ports()
    with pytest.raises(UnknownShardError):
        await transactions.begin(Session(), Hints(shard_key="atlantis"), None, False)
    assert ports.acquired == [] and ports.ends == 0


async def test_every_way_a_transaction_ends_returns_its_connection_and_says_so() -> None:
    """Commit, rollback, a commit after a failed statement, the idle timeout, the client
    leaving: each gives the pinned connection back once and calls `ended` (what a drain
    waits on: nothing else tells it of an idle rollback)."""
    transactions, ports = _with_ports(idle_timeout=0.05)
    session = Session()
    committed = await transactions.begin(session, Hints(shard="europe"), None, False)
    await transactions.commit(session, committed.id)
    assert (ports.ends, ports.pool.released) == (1, [False])
    rolled_back = await transactions.begin(session, Hints(shard="europe"), None, False)
    await transactions.rollback(session, rolled_back.id)
    assert (ports.ends, ports.pool.released) == (2, [False, False])

    idle = await transactions.begin(session, Hints(shard="europe"), None, False)
    await _until(lambda: ports.ends == 3)
    assert not session.transactions and ports.pool.released == [False] * 3
    assert ports.log[-1] == "ROLLBACK" and ports.pool.idle_rollbacks == 1
    with pytest.raises(TransactionError, match="sent nothing"):
        await transactions.commit(session, idle.id)
    assert ports.ends == 3  # refused: nothing more ended

    left_open = Session()
    for _ in range(2):
        await transactions.begin(left_open, Hints(shard="europe"), None, False)
    await transactions.close_session(left_open)
    assert ports.ends == 5 and not left_open.transactions
    assert ports.pool.released == [False] * 5


async def test_a_connection_lost_during_commit_is_dropped_not_reused() -> None:
    transactions, ports = _with_ports()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    assert isinstance(tx, Transaction)

    async def lost(sql: str) -> None:
        raise ConnectionResetError("reset by peer")

    tx.backend.conn.execute = lost  # type: ignore[method-assign,assignment]  # a connection that fails
    with pytest.raises(CommitOutcomeUnknown, match="may have committed"):
        await transactions.commit(session, tx.id)
    assert ports.pool.released == [True] and ports.ends == 1 and not session.transactions
