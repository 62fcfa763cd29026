"""The client's shared request sender (client/sender.py), with no Client around it: a
Transaction and a Collection built on one Sender share its read-your-writes map and its
command timeout, as they do inside a Client. Against the in-process fake router."""

from __future__ import annotations

from client.docs import Collection
from client.pool import PoolConfig, RouterPool
from client.sender import Sender
from client.transaction import Transaction
from protocol import Commit, Doc, Message, Status
from tests.support.fake_server import FakeConnection, FakeRouter, default_handler


def commits_with_a_token(conn: FakeConnection, msg: Message) -> None:
    if isinstance(msg, Commit):
        conn.send(Status(msg.id, "COMMIT", 0, None, "europe:77"))
    else:
        default_handler(conn, msg)


async def test_a_transaction_and_a_collection_share_one_senders_session() -> None:
    async with FakeRouter(commits_with_a_token) as router:
        host, port = router.address.rsplit(":", 1)
        pool = RouterPool(PoolConfig(addresses=((host, int(port)),), token="secret", size=1))
        await pool.start()
        try:
            sender = Sender(pool, command_timeout=2.5)
            tx = Transaction(sender, sender.hints("europe", None, None, None, None), None,
                             False, None)
            async with tx:
                await tx.execute("UPDATE t SET x = 1")
            assert sender.ryw == {"europe": 77}  # the commit's token, kept by the sender
            courses = Collection(sender, "courses", shard="europe")
            assert await courses.find_one({"_id": 1}) == {"op": "find_one",
                                                          "args": {"filter": {"_id": 1}}}
            [doc] = router.requests(Doc)
            assert doc.hints.ryw == {"europe": 77}  # sent with the collection's read
            assert doc.hints.timeout_ms == 2500  # the sender's command timeout
        finally:
            await pool.close()
