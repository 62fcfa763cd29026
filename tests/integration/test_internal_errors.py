"""A fault in the router reaches the client as INTERNAL (9001), with a reference under which the
router logged it with its traceback, and the router goes on serving; the client's own bad
input is never INTERNAL (PROTOCOL.md section 3)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

import client
from protocol import (
    Admin,
    Encoder,
    Error,
    ErrorCode,
    FrameDecoder,
    Hello,
    HelloOk,
    Message,
    Rejected,
)
from router.backend.docstore import DocStore
from router.config import Config
from router.core.documents import DocumentShapes
from router.node import RouterNode
from tests.support.router_proc import TOKEN, RouterProcess, router_config

BROKEN = "broken_component"  # the collection whose requests meet the bug


class BrokenDocStore:
    """A document store with a bug in it, as a slip in router code would put there: for one
    collection it adds a str to an int. Everything else goes to the real store."""

    def __init__(self, real: DocStore) -> None:
        self.real = real

    async def run(self, collection: str, op: str, args: dict[str, Any]) -> Any:
        if collection == BROKEN:
            return _count(args)
        return await self.real.run(collection, op, args)

    async def close(self) -> None:
        await self.real.close()


def _count(args: dict[str, Any]) -> int:
    label: Any = "documents: "
    return len(args) + label  # the bug: a TypeError


@pytest.fixture
async def node(migrated: Config, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RouterNode]:
    """A router node in this process (so the test can hand it a broken component and read
    its log), on the real cluster."""
    config = router_config(migrated, port_shift=140)
    config = replace(config, metrics=replace(config.metrics, port=0))
    monkeypatch.setenv(config.router.auth_token_env, TOKEN)
    real = DocStore(config.document_store, DocumentShapes(config.shards).validate)
    router = RouterNode(config, docstore=BrokenDocStore(real))  # type: ignore[arg-type]
    await router.startup()
    try:
        yield router
    finally:
        await router.shutdown()


async def test_a_bug_in_the_router_is_internal_with_a_logged_reference_and_it_serves_on(
    node: RouterNode, caplog: pytest.LogCaptureFixture,
) -> None:
    """Bug: a TypeError raised in router code was answered 3005 INVALID_REQUEST, as if the
    client had sent bad input, and nothing was logged to find it by."""
    caplog.set_level(logging.ERROR, logger="georoute")
    r = node.config.router
    async with await client.connect(f"georoute://{r.listen_host}:{r.listen_port}",
                                    token=TOKEN) as db:
        with pytest.raises(client.InternalError) as info:
            await db.docs(BROKEN).count({})
        error = info.value
        assert error.code == ErrorCode.INTERNAL and type(error) is client.InternalError
        assert error.reference is not None and error.reference in error.message
        assert not error.retryable
        # The router's log has the reference, with the traceback down to the bug.
        logged = [rec for rec in caplog.records if error.reference in rec.getMessage()]
        assert len(logged) == 1 and logged[0].levelno == logging.ERROR
        assert logged[0].exc_info is not None
        assert isinstance(logged[0].exc_info[1], TypeError)
        assert caplog.text.count(error.reference) == 1
        assert "_count" in caplog.text  # the frame of the bug
        # The router goes on serving, on the same connection: SQL, and the document store.
        assert await db.fetchval("SELECT 41 + 1", shard="europe") == 42
        assert await db.docs("internal_error_probe").count({}) >= 0
        # The next bug gets a reference of its own.
        with pytest.raises(client.InternalError) as again:
            await db.docs(BROKEN).count({})
        assert again.value.reference not in (None, error.reference)


# ---- what the edge refuses is the client's error, not ours ---------------------------------


async def _exchange(router: RouterProcess, *messages: Message) -> list[Message | Rejected]:
    """Hello, then `messages`; their replies in order."""
    r = router.config.router
    reader, writer = await asyncio.open_connection(r.listen_host, r.listen_port)
    encoder, decoder = Encoder(), FrameDecoder()
    replies: list[Message | Rejected] = []
    try:
        writer.write(encoder.encode(Hello(1, [1], "test", TOKEN)))
        for message in messages:
            writer.write(encoder.encode(message))
        while len(replies) < 1 + len(messages):
            data = await asyncio.wait_for(reader.read(1 << 16), 10)
            assert data, "the router closed the connection"
            replies.extend(decoder.feed(data))
    finally:
        writer.close()
    assert isinstance(replies[0], HelloOk)
    return replies[1:]


async def test_an_unknown_admin_op_is_the_clients_error(router: RouterProcess) -> None:
    unknown, known = await _exchange(router, Admin(2, "reboot"), Admin(3, "topology"))
    assert isinstance(unknown, Error) and unknown.code == ErrorCode.INVALID_REQUEST
    assert "reboot" in unknown.message and not unknown.retryable
    assert not isinstance(known, Error)  # the connection goes on


async def test_an_idempotency_key_on_a_document_write_is_the_clients_error(
    db: client.Client,
) -> None:
    docs = db.docs("internal_error_probe")
    with pytest.raises(client.InvalidRequestError, match="idempotency keys are not supported"):
        await docs.command("insert_one", {"document": {"n": 1}}, idempotency_key="k-doc-1")
    assert await docs.count({"n": 1}) == 0  # nothing was run


async def test_a_wrong_parameter_count_in_a_transaction_is_the_clients_error(
    db: client.Client,
) -> None:
    """There the driver refuses it (outside a transaction the router counts them first)."""
    async with db.transaction(shard="europe") as tx:
        with pytest.raises(client.InvalidRequestError, match="expects 1 argument"):
            await tx.fetchval("SELECT $1::int", 1, 2)
        await tx.rollback()
