"""The transaction state machine (router/engine/transactions.py) with stand-in backend connections:
the per-client limit holds under concurrent begins, a batch inside a transaction is not split
by a commit, an idle transaction is rolled back by the router itself, and a statement whose id
or function argument names another shard is refused. Routing uses the real router.toml and
classifier; no database is involved."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from protocol.errors import ErrorCode
from protocol.messages import Hints
from router.config import load_config
from router.core.routing import CrossShardError
from router.engine.classifier import Classifier
from router.engine.session import Session, TransactionError
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
    def __init__(self) -> None:
        self.released: list[bool] = []  # broken?
        self.idle_rollbacks = 0

    def release(self, backend: FakeBackend, broken: bool = False) -> None:
        self.released.append(broken)


def _transactions(idle_timeout: float = 60.0, acquire_yields: bool = True
                  ) -> tuple[Transactions, list[str], FakePool]:  # fmt: skip
    log: list[str] = []
    pool = FakePool()
    node = types.SimpleNamespace(name="europe-primary", pool=pool)
    router = dataclasses.replace(CONFIG.router, transaction_idle_timeout_seconds=idle_timeout)
    database = dataclasses.replace(CONFIG.database, pool_max_size=4)  # 2 per client
    config = dataclasses.replace(CONFIG, router=router, database=database)

    async def acquire(node: Any) -> FakeBackend:
        if acquire_yields:  # a connection opened; else an idle one, handed over at once
            await asyncio.sleep(0)
        return FakeBackend(log)

    async def token(session: Session, shard: Any) -> str:
        return "europe:1"

    executor = types.SimpleNamespace(
        config=config, acquire=acquire, token=token,
        classifier=Classifier(config.tables, config.router.read_only_functions,
                              sharded_functions=config.router.sharded_functions),
        topology=types.SimpleNamespace(shards={s: types.SimpleNamespace(primary=node)
                                               for s in config.shards}),
    )  # fmt: skip
    return Transactions(executor), log, pool  # type: ignore[arg-type]


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
                                   transactions.commit(session, tx.id))  # fmt: skip
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
])  # fmt: skip
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
