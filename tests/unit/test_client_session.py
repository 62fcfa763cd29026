"""Session behaviour: read-your-writes tokens, transactions pinned to a connection, and the
document-store calls."""

from __future__ import annotations

import pytest

import client as georoute_client
from protocol import (
    Begin,
    Commit,
    Consistency,
    Doc,
    DocReply,
    Message,
    Query,
    QueryKind,
    Rollback,
    Rows,
    Status,
)
from tests.support.fake_server import FakeConnection, FakeRouter, Handler, default_handler


def writes_with_tokens(tokens: list[str]) -> Handler:
    """Executes answer with the next ryw token; fetches echo."""
    pending = list(tokens)

    def handler(conn: FakeConnection, msg: Message) -> None:
        if isinstance(msg, Query) and msg.kind is QueryKind.EXECUTE:
            conn.send(Status(msg.id, "INSERT 0 1", 1, None, pending.pop(0)))
        else:
            default_handler(conn, msg)

    return handler


async def test_ryw_token_sent_with_later_reads() -> None:
    handler = writes_with_tokens(["europe:100", "europe:90", "asia:5"])
    async with (
        FakeRouter(handler) as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        await client.fetch("SELECT 1")
        for _ in range(3):
            await client.execute("INSERT INTO t VALUES (1)")
        await client.fetch("SELECT 2", shard="europe")
        first, *_, last = router.requests(Query)
        assert first.hints.ryw is None
        assert last.hints.ryw == {"europe": 100, "asia": 5}
        assert client.ryw_state == {"europe": 100, "asia": 5}


async def test_tokens_carry_a_session_to_another_client() -> None:
    """ryw_tokens() out of one session, observe_ryw_tokens() into another (a web tier's next
    request, elsewhere): the second sends the first one's positions with its reads, merged
    with its own, the highest per shard."""
    async with (
        FakeRouter(writes_with_tokens(["europe:100", "asia:5", "asia:70"])) as router,
        await georoute_client.connect(router.dsn, token="secret") as first,
        await georoute_client.connect(router.dsn, token="secret") as second,
    ):
        await first.execute("INSERT INTO t VALUES (1)")
        await first.execute("INSERT INTO t VALUES (2)")
        tokens = first.ryw_tokens()
        assert tokens == ["asia:5", "europe:100"]
        await second.execute("INSERT INTO t VALUES (3)")  # asia:70, above the first's asia:5
        second.observe_ryw_tokens(",".join(tokens).split(","))  # as a cookie would carry them
        await second.fetch("SELECT 1", shard="europe")
        assert router.requests(Query)[-1].hints.ryw == {"europe": 100, "asia": 70}
        assert second.ryw_tokens() == ["asia:70", "europe:100"]
        second.observe_ryw_tokens(["europe:99"])  # lower: changes nothing
        await second.fetch("SELECT 1", shard="europe")
        assert router.requests(Query)[-1].hints.ryw == {"europe": 100, "asia": 70}


@pytest.mark.parametrize(
    ("tokens", "error"),
    [(["europe:1", "europe"], ValueError), (["europe:1", ":5"], ValueError),
     (["europe:1", "europe:-5"], ValueError), (["europe:1", "europe:x"], ValueError),
     (["europe:1", 5], TypeError), ("europe:1", TypeError)],
)
async def test_a_malformed_token_is_refused_and_none_is_taken(
    tokens: list[object], error: type[Exception]
) -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        with pytest.raises(error):
            client.observe_ryw_tokens(tokens)  # type: ignore[arg-type]
        assert client.ryw_tokens() == [] and client.ryw_state == {}
        await client.fetch("SELECT 1")
        assert router.requests(Query)[-1].hints.ryw is None


async def test_session_consistency_can_be_turned_off() -> None:
    handler = writes_with_tokens(["europe:100"])
    async with (
        FakeRouter(handler) as router,
        await georoute_client.connect(
            router.dsn, token="secret", session_consistency=False
        ) as client,
    ):
        await client.execute("INSERT INTO t VALUES (1)")
        await client.fetch("SELECT 1", consistency="replica")
        last = router.requests(Query)[-1]
        assert last.hints.ryw is None
        assert last.hints.consistency is Consistency.REPLICA


async def test_hints_are_sent() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        await client.fetch("SELECT 1", shard_key="europe", consistency=Consistency.STRONG)
        await client.execute("UPDATE t SET a = 1", shard="asia", idempotency_key="op-9")
        fetch, execute = router.requests(Query)
        assert fetch.hints.shard_key == "europe" and fetch.hints.consistency is Consistency.STRONG
        assert execute.hints.shard == "asia" and execute.hints.idempotency_key == "op-9"
        assert not execute.hints.want_rows


async def test_transaction_commits_on_one_connection() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret", pool_size=3) as client,
    ):
        async with client.transaction(shard_key="europe", isolation="serializable") as tx:
            assert tx.tx is not None
            await tx.execute("INSERT INTO t VALUES (1)")
            assert await tx.fetchval("SELECT 1") == "SELECT 1"
        (begin,) = router.requests(Begin)
        assert begin.hints.shard_key == "europe"
        (commit,) = router.requests(Commit)
        assert commit.tx == tx.tx
        statements = router.requests(Query)
        assert [q.hints.tx for q in statements] == [tx.tx, tx.tx]
        # Begin, both statements and Commit all went over the same connection.
        (conn,) = [c for c in router.connections if any(isinstance(m, Begin) for m in c.received)]
        assert [type(m) for m in conn.received] == [Begin, Query, Query, Commit]
        assert not router.requests(Rollback)


async def test_transaction_rolls_back_on_exception() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        with pytest.raises(RuntimeError):
            async with client.transaction(shard="asia") as tx:
                await tx.execute("DELETE FROM t")
                raise RuntimeError("application failure")
        (rollback,) = router.requests(Rollback)
        assert rollback.tx == tx.tx
        assert not router.requests(Commit)


async def test_transaction_statement_is_not_retried_after_connection_loss() -> None:
    def drop_inside_tx(conn: FakeConnection, msg: Message) -> None:
        if isinstance(msg, Query):
            conn.drop()
        else:
            default_handler(conn, msg)

    async with (
        FakeRouter(drop_inside_tx) as router,
        await georoute_client.connect(
            router.dsn, token="secret", reconnect_backoff=0.001
        ) as client,
    ):
        with pytest.raises(georoute_client.ConnectionLostError):
            async with client.transaction(shard="asia") as tx:
                await tx.fetch("SELECT 1")
        assert len(router.requests(Query)) == 1


async def test_docs_calls() -> None:
    async with (
        FakeRouter() as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        content = client.docs("course_content", shard_key="europe")
        found = await content.find_one({"course_id": 7}, projection={"body": 1})
        assert found == {
            "op": "find_one",
            "args": {"filter": {"course_id": 7}, "projection": {"body": 1}},
        }
        await content.insert_one({"course_id": 7}, idempotency_key="ins-1")
        await content.find({}, sort=[("title", 1)], limit=5)
        find_one, insert, find = router.requests(Doc)
        assert find_one.collection == "course_content" and find_one.hints.shard_key == "europe"
        assert insert.op == "insert_one" and insert.args == {"document": {"course_id": 7}}
        assert insert.hints.idempotency_key == "ins-1"
        assert find.args == {"filter": {}, "sort": [["title", 1]], "limit": 5}


async def test_doc_write_ryw_token_is_remembered() -> None:
    def handler(conn: FakeConnection, msg: Message) -> None:
        assert isinstance(msg, Doc)
        if msg.op == "count":
            conn.send(DocReply(msg.id, 3))
        else:
            conn.send(DocReply(msg.id, {"inserted_id": 1}, None, "docs-europe:42"))

    async with (
        FakeRouter(handler) as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        docs = client.docs("events")
        assert await docs.insert_one({"a": 1}) == {"inserted_id": 1}
        assert await docs.count({}) == 3
        assert router.requests(Doc)[-1].hints.ryw == {"docs-europe": 42}


def test_record_behaviour() -> None:
    from client.record import records

    (row,) = records(["a", "b", "a"], [[1, 2, 3]])
    assert row["a"] == 1 and row[2] == 3 and row.get("zz", 9) == 9
    assert list(row) == [1, 2, 3] and len(row) == 3 and "b" in row
    assert row == (1, 2, 3)
    assert repr(row).startswith("<Record")


async def test_rows_reply_used_for_status() -> None:
    def rows(conn: FakeConnection, msg: Message) -> None:
        conn.send(Rows(msg.id, ["id"], [[5]], "INSERT 0 1"))

    async with (
        FakeRouter(rows) as router,
        await georoute_client.connect(router.dsn, token="secret") as client,
    ):
        assert await client.execute("INSERT INTO t VALUES (5) RETURNING id") == "INSERT 0 1"
