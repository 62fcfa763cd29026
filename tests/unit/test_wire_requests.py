"""Requests the router refuses one by one, and errors that say what happened: a bad hint value
or an unknown message type answers that request alone (the connection and the requests in
flight on it live on), a Pong or a reply type sent by a client is not a router bug, request
id 0 is reserved, HelloOk tells the limits, a Commit after a failed statement says the
transaction was rolled back (and a Rollback after it succeeds), READ_ONLY is retryable only
for a demoted primary, and errors the router raised itself say so. Client connections use
the fake transport and Handler of test_server_flow (and the real RequestHandler over a
stand-in engine where its replies matter); transactions the stand-in ports of
test_transactions. No database is involved."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any

import asyncpg
import msgpack
import pytest

from protocol import (
    Encoder,
    Error,
    ErrorCode,
    Hello,
    HelloOk,
    Hints,
    Ping,
    Pong,
    Query,
    Rows,
)
from protocol.messages import Role as WireRole
from router.backend.wirevalues import Columns, ResultValueError
from router.core.classify import SqlParseError
from router.engine.classifier import Classifier
from router.engine.errors import NodeReadOnlyError
from router.engine.outcome import Outcome
from router.engine.session import Session, TransactionError
from router.metrics import Metrics
from router.server.connection import ClientConnection
from router.server.failures import failure_for
from router.server.handlers import RequestHandler
from tests.unit.test_request_handler import Engine
from tests.unit.test_server_flow import LIMITS, TOKEN, RecordingTransport, _connection, _frames
from tests.unit.test_transactions import CONFIG, _transactions


def frame(*fields: Any) -> bytes:
    body = msgpack.packb(list(fields))
    return len(body).to_bytes(4, "big") + body


async def ready(handler: Any = None) -> tuple[ClientConnection, RecordingTransport]:
    conn, transport, _ = _connection(handler)
    conn.data_received(Encoder().encode(Hello(1, [1], "test", TOKEN)))
    await _flushed()
    return conn, transport


async def _flushed() -> None:
    await asyncio.sleep(0)  # one turn of the loop: the replies of a turn leave at its end


def replies(transport: RecordingTransport) -> list[Any]:
    out = [m for batch in _frames(transport.writes) for m in batch]
    transport.writes.clear()
    return out


async def test_hello_ok_tells_the_limits_a_client_must_keep() -> None:
    _, transport = await ready()
    (hello_ok,) = replies(transport)
    assert isinstance(hello_ok, HelloOk)
    assert hello_ok.server_info["max_frame_bytes"] == LIMITS.max_frame_bytes
    assert hello_ok.server_info["max_sql_bytes"] == LIMITS.max_sql_bytes
    assert hello_ok.server_info["max_in_flight"] == LIMITS.max_in_flight


@pytest.mark.parametrize(
    "bad",
    [
        frame(10, 7, "fetch", "SELECT 1", [], {"consistency": "bogus"}),
        frame(10, 7, "fetch", "SELECT 1", [], {"timeout_ms": "x"}),
        frame(10, 7, "fetch", "SELECT 1", [], {"timeout_ms": -5}),
        frame(10, 7, "bogus", "SELECT 1", [], {}),
        frame(10, 7, "fetch", "SELECT 1"),  # fields missing
        frame(12, 7, {"shard": "europe"}, "bogus", False),  # Begin with isolation "bogus"
        frame(99, 7, "from a newer version"),  # an unknown message type
    ],
)
async def test_a_bad_request_is_refused_alone_and_the_connection_lives_on(
    bad: bytes,
) -> None:
    """Bug: 1001 MALFORMED_FRAME and the connection closed, losing every request in flight."""
    conn, transport = await ready()
    replies(transport)
    conn.data_received(Encoder().encode(Ping(6)) + bad + Encoder().encode(Ping(8)))
    await _flushed()
    pong6, refused, pong8 = replies(transport)
    assert (pong6, pong8) == (Pong(6), Pong(8))
    assert isinstance(refused, Error) and refused.id == 7
    assert refused.code in (ErrorCode.INVALID_REQUEST, ErrorCode.UNKNOWN_MESSAGE_TYPE)
    assert not conn.closing
    if refused.code == ErrorCode.INVALID_REQUEST:
        assert "bogus" in refused.message or "timeout_ms" in refused.message or \
            "missing" in refused.message  # it names what was wrong


async def test_replies_sent_by_a_client_are_not_router_bugs() -> None:
    """Bug: a Pong, HelloOk or Error from a client got 9001 INTERNAL (a KeyError)."""
    conn, transport = await ready()
    replies(transport)
    enc = Encoder()
    conn.data_received(enc.encode(Pong(3)) + enc.encode(HelloOk(4, 1, "x"))
                       + enc.encode(Error(5, 9001, "INTERNAL", "boom"))
                       + enc.encode(Rows(6, [], [])) + enc.encode(Ping(7)))
    await _flushed()
    got = replies(transport)
    # A Pong needs no answer, an Error is never answered; the replies get 1003.
    assert [(type(m).__name__, m.id, getattr(m, "code", None)) for m in got] == [
        ("Error", 4, ErrorCode.UNKNOWN_MESSAGE_TYPE),
        ("Error", 6, ErrorCode.UNKNOWN_MESSAGE_TYPE),
        ("Pong", 7, None),
    ]
    assert not conn.closing


async def test_request_id_0_is_reserved() -> None:
    conn, transport = await ready()
    replies(transport)
    conn.data_received(Encoder().encode(Query(0, "SELECT 1", hints=Hints(shard="europe"))))
    await _flushed()
    (error,) = replies(transport)
    assert isinstance(error, Error) and error.id == 0 and error.code == ErrorCode.MALFORMED_FRAME
    assert conn.closing


async def test_a_second_hello_is_refused_alone() -> None:
    conn, transport = await ready()
    replies(transport)
    conn.data_received(Encoder().encode(Hello(2, [1], "again", "secret")))
    await _flushed()
    (error,) = replies(transport)
    assert isinstance(error, Error) and error.code == ErrorCode.INVALID_REQUEST
    assert not conn.closing


# ---- transactions: a Commit after a failed statement ---------------------------------------


def _failing(tx: Any, exc: BaseException) -> None:
    async def run(sql: str, params: Any) -> Any:
        raise exc

    tx.backend.run = run


async def test_a_commit_after_a_failed_statement_rolls_back_and_a_rollback_then_succeeds(
) -> None:
    """Bug: Commit got 5002 and the transaction was gone, so the Rollback 5002 asked for
    got 5001 UNKNOWN_TRANSACTION."""
    transactions, log, pool = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    _failing(tx, asyncpg.PostgresError.new({"C": "23505", "M": "duplicate key", "S": "ERROR"}))
    with pytest.raises(asyncpg.UniqueViolationError):
        await transactions.statement(session, tx, "SELECT 1", [], Hints())
    with pytest.raises(TransactionError) as info:
        await transactions.commit(session, tx.id)
    assert info.value.code is ErrorCode.TRANSACTION_ABORTED
    assert "rolled back" in str(info.value) and "over" in str(info.value)
    assert log == ["BEGIN", "ROLLBACK"] and pool.released == [False]
    assert await transactions.rollback(session, tx.id) is None  # answered as ROLLBACK
    assert await transactions.rollback(session, tx.id) is None  # as often as it is sent
    assert log == ["BEGIN", "ROLLBACK"]  # nothing more reached the database
    with pytest.raises(TransactionError) as again:
        await transactions.commit(session, tx.id)
    assert again.value.code is ErrorCode.TRANSACTION_ABORTED


async def test_a_rollback_of_a_committed_transaction_is_still_unknown() -> None:
    transactions, _, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    await transactions.commit(session, tx.id)
    with pytest.raises(TransactionError) as info:
        await transactions.rollback(session, tx.id)
    assert info.value.code is ErrorCode.UNKNOWN_TRANSACTION


# ---- READ_ONLY: retryable only for a write that reached a demoted primary ------------------

READ_ONLY = {"C": "25006", "M": "cannot execute UPDATE in a read-only transaction", "S": "ERROR"}


async def test_a_write_in_a_read_only_transaction_is_the_clients_own_error() -> None:
    """Bug: 4005 READ_ONLY with retryable true; sending it again can never succeed."""
    transactions, _, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, True)
    _failing(tx, asyncpg.PostgresError.new(READ_ONLY))
    with pytest.raises(asyncpg.PostgresError) as info:
        await transactions.statement(session, tx, "UPDATE users SET city = 'x'", [], Hints())
    failure = failure_for(info.value)
    assert (failure.code, failure.retryable, failure.sqlstate) == (
        ErrorCode.POSTGRES_ERROR, False, "25006")


async def test_a_read_write_transaction_refused_as_read_only_lost_its_primary() -> None:
    transactions, _, _ = _transactions()
    session = Session()
    tx = await transactions.begin(session, Hints(shard="europe"), None, False)
    _failing(tx, asyncpg.PostgresError.new(READ_ONLY))
    with pytest.raises(NodeReadOnlyError) as info:
        await transactions.statement(session, tx, "UPDATE users SET city = 'x'", [], Hints())
    failure = failure_for(info.value)
    # The node was demoted; this statement, sent again in this transaction, cannot succeed.
    assert (failure.code, failure.retryable) == (ErrorCode.READ_ONLY, False)


def test_read_only_refusals_are_retryable_only_from_a_demoted_primary() -> None:
    plain = asyncpg.PostgresError.new(READ_ONLY)
    assert failure_for(plain).code == ErrorCode.POSTGRES_ERROR
    assert not failure_for(plain).retryable
    demoted = failure_for(NodeReadOnlyError(plain, retryable=True))
    assert (demoted.code, demoted.retryable, demoted.sqlstate) == (
        ErrorCode.READ_ONLY, True, "25006")


# ---- errors the router raised itself say so ------------------------------------------------


def test_a_parameter_the_driver_refused_says_the_router_raised_it() -> None:
    exc = asyncpg.DataError("invalid input for query argument $2: '7' (an integer is required)")
    failure = failure_for(exc)
    assert (failure.code, failure.sqlstate) == (ErrorCode.POSTGRES_ERROR, "22000")
    assert failure.detail == {"raised_by": "router", "parameter": 2}
    server = asyncpg.PostgresError.new({"C": "22000", "M": "data exception", "S": "ERROR",
                                        "F": "int.c"})
    assert "raised_by" not in failure_for(server).detail


def test_a_result_value_that_cannot_be_sent_names_its_column_not_invalid_parameters() -> None:
    """Bug (#12): SELECT '24:00:00'::time was reported as 'invalid parameters'."""
    exc = ResultValueError("time", "24:00:00 is past Python's last time of day")
    exc.column = "t"
    failure = failure_for(exc)
    assert failure.code == ErrorCode.POSTGRES_ERROR and failure.sqlstate == "22008"
    assert failure.detail == {"raised_by": "router", "column": "t", "type": "time"}
    assert "invalid parameters" not in failure.message and "'t'" in failure.message


@pytest.mark.parametrize("text", ["SELECT 1 -- " + "x" * 90, "SELECT 'é' -- " + "é" * 60])
def test_a_statement_over_max_sql_bytes_gets_a_position(text: str) -> None:
    """Bug: 3003 without the detail.position section 3 promises."""
    classifier = Classifier(CONFIG.tables, CONFIG.router.read_only_functions, 16, 64)
    with pytest.raises(SqlParseError) as info:
        classifier.analyze(text)
    failure = failure_for(info.value)
    assert failure.code == ErrorCode.SQL_PARSE_ERROR and failure.sqlstate == "54000"
    position = failure.detail["position"]
    # 1-based: the first character past the limit, counted in characters
    assert len(text[: position - 1].encode()) <= 64 < len(text[:position].encode())


async def test_a_row_value_without_a_wire_form_is_an_error_naming_its_column() -> None:
    """Through the real RequestHandler: its engine (a stand-in) answers a row with a value
    that has no wire form."""
    classifier = Classifier(CONFIG.tables, CONFIG.router.read_only_functions)

    class WeirdRows(Engine):
        async def query(self, session: Any, sql: str, params: Any, hints: Any) -> Outcome:
            classifier.analyze(sql)  # as the executor does: a read, by its analysis
            columns = Columns(["id", "weird"], ["int4", "text:weird"])
            return Outcome(columns, [(1, object())], "SELECT 1", "europe", "europe-2",
                           WireRole.REPLICA)

    spawned: set[asyncio.Task[None]] = set()

    def spawn(work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        spawned.add(task)
        task.add_done_callback(spawned.discard)

    handler = RequestHandler(
        SimpleNamespace(classifier=classifier, executor=WeirdRows("n")),  # type: ignore[arg-type]
        encoder=Encoder(), metrics=Metrics(), docstore=None,  # type: ignore[arg-type]
        auth_token=TOKEN, report=dict, spawn=spawn,
    )
    conn, transport = await ready(handler)
    replies(transport)
    transport.wrote.clear()
    conn.data_received(Encoder().encode(Query(5, "SELECT 1", hints=Hints(shard="europe"))))
    await asyncio.wait_for(transport.wrote.wait(), 5)
    (error,) = replies(transport)
    assert isinstance(error, Error) and error.code == ErrorCode.NOT_ENCODABLE
    assert "'weird'" in error.message and "text:weird" in error.message
