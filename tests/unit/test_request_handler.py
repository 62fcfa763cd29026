"""The real RequestHandler (router/server/handlers.py) over a recording stand-in engine and
document store: what each request asks of the runtime in force, the replies it makes, which
failed requests count as reads, and a gone client's transactions rolled back in the
background. A reload's new runtime serves the next request. No node, config file or
database."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from protocol import (
    Admin,
    AdminReply,
    Begin,
    Commit,
    Doc,
    DocReply,
    Encoder,
    FrameDecoder,
    Hints,
    Query,
    QueryKind,
    Status,
    TxStarted,
)
from protocol.messages import Role as WireRole
from router.engine.outcome import Outcome
from router.engine.session import Session
from router.metrics import Metrics
from router.server.errors import UnsupportedRequest
from router.server.handlers import RequestHandler


@dataclass
class Engine:
    """The executor, as the handler uses it; `calls` records (name, session)."""

    name: str
    calls: list[tuple[str, Any]] = field(default_factory=list)
    transactions: Any = None

    def __post_init__(self) -> None:
        engine = self

        class Transactions:
            async def begin(self, session: Session, hints: Hints, isolation: Any,
                            read_only: bool) -> Any:
                engine.calls.append(("begin", session))
                return SimpleNamespace(id=9, shard="asia", node=SimpleNamespace(name="asia-node1"))

            async def commit(self, session: Session, tx: int) -> Outcome:
                engine.calls.append(("commit", session))
                return Outcome([], [], "COMMIT", "asia", "asia-node1", WireRole.PRIMARY, "asia:42")

            async def close_session(self, session: Session) -> None:
                engine.calls.append(("close_session", session))

        self.transactions = Transactions()

    # The fast path's calls (test_server_flow drives those through a connection).
    def submit(self, *args: Any) -> None:
        return None

    def route_of(self, node: Any) -> list[str]:
        return [node.shard, node.name, "replica"]

    def needs_token(self, routed: Any, status: str) -> bool:
        return False

    def token_at(self, session: Session, routed: Any, lsn: int) -> str:
        return f"{routed.shard.name}:{lsn}"

    async def write_token(self, session: Session, routed: Any) -> str:
        return f"{routed.shard.name}:1"

    async def query(self, session: Session, sql: str, params: Any, hints: Hints) -> Outcome:
        self.calls.append(("query", session))
        return Outcome([], [], "UPDATE 1", "europe", self.name, WireRole.PRIMARY, "europe:7")


class Classifier:
    def __init__(self, reads: set[str]) -> None:
        self.reads = reads

    def cached(self, sql: str) -> Any:
        return SimpleNamespace(read_only=sql in self.reads)


class DocStore:
    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    async def run(self, collection: str, op: str, args: dict[str, Any]) -> Any:
        self.ran.append((collection, op))
        return {"n": 1}


@dataclass(eq=False)
class Client:
    """A client connection, as the handler's register sees it."""

    session: Session = field(default_factory=Session)


def runtime(name: str, reads: set[str] | None = None) -> Any:
    return SimpleNamespace(executor=Engine(name), classifier=Classifier(reads or set()))


def handler_over(rt: Any, docstore: DocStore | None = None, closed: Any = None
                 ) -> tuple[RequestHandler, list[Any]]:
    spawned: list[Any] = []

    def spawn(coro: Any) -> None:
        spawned.append(asyncio.ensure_future(coro))

    handler = RequestHandler(rt, encoder=Encoder(), metrics=Metrics(),
                             docstore=docstore or DocStore(),  # type: ignore[arg-type]
                             auth_token="secret", report=lambda: {"router": "r1"},
                             spawn=spawn, closed=closed)
    return handler, spawned


def decode(frame: bytes) -> Any:
    (message,) = FrameDecoder(1 << 20).feed(frame)
    return message


async def test_each_request_goes_to_the_runtime_in_force_when_it_starts() -> None:
    first = runtime("europe-node1")
    handler, _ = handler_over(first)
    session = Session()
    reply, outcome = await handler.handle(session, Query(2, "UPDATE t SET x = 1", [], QueryKind.EXECUTE, Hints()))
    status = decode(reply)
    assert isinstance(status, Status) and status.ryw_token == "europe:7"
    assert status.route is not None and status.route.node == "europe-node1"
    assert outcome is not None and first.executor.calls == [("query", session)]
    reloaded = runtime("europe-node9")
    handler.runtime = reloaded  # what a reload does: the whole runtime at once
    reply, _ = await handler.handle(session, Query(3, "UPDATE t SET x = 1", [], QueryKind.EXECUTE, Hints()))
    assert decode(reply).route.node == "europe-node9"
    assert len(first.executor.calls) == 1 and reloaded.executor.calls == [("query", session)]


async def test_begin_and_commit_reply_with_the_transaction_its_route_and_token() -> None:
    rt = runtime("n")
    handler, _ = handler_over(rt)
    session = Session()
    reply, outcome = await handler.handle(session, Begin(2, Hints(shard="asia"), None, False))
    started = decode(reply)
    assert isinstance(started, TxStarted) and started.tx == 9 and outcome is None
    assert started.route is not None and (started.route.shard, started.route.node) == (
        "asia", "asia-node1")
    reply, outcome = await handler.handle(session, Commit(3, 9))
    committed = decode(reply)
    assert isinstance(committed, Status) and committed.status == "COMMIT"
    assert committed.ryw_token == "asia:42" and outcome is not None
    assert [name for name, _ in rt.executor.calls] == ["begin", "commit"]


async def test_documents_and_admin_requests() -> None:
    docstore = DocStore()
    handler, _ = handler_over(runtime("n"), docstore)
    reply, _ = await handler.handle(Session(), Doc(2, "courses", "find", {}, Hints()))
    assert isinstance(decode(reply), DocReply) and docstore.ran == [("courses", "find")]
    with pytest.raises(UnsupportedRequest, match="idempotency keys"):
        await handler.handle(Session(), Doc(3, "courses", "insert_one", {"document": {}},
                                            Hints(idempotency_key="k")))
    assert docstore.ran == [("courses", "find")]  # refused before it ran
    reply, _ = await handler.handle(Session(), Admin(4, "topology"))
    admin = decode(reply)
    assert isinstance(admin, AdminReply) and admin.payload == {"router": "r1"}
    with pytest.raises(UnsupportedRequest, match="unknown admin op"):
        await handler.handle(Session(), Admin(5, "reboot"))


def test_which_failed_requests_count_as_reads() -> None:
    handler, _ = handler_over(runtime("n", reads={"SELECT 1"}))
    assert handler.read_only(Query(2, "SELECT 1"))
    assert not handler.read_only(Query(3, "UPDATE t SET x = 1"))
    assert handler.read_only(Doc(4, "courses", "find", {}, Hints()))
    assert not handler.read_only(Doc(5, "courses", "insert_one", {}, Hints()))
    assert not handler.read_only(Commit(6, 1))


async def test_a_gone_clients_open_transactions_are_rolled_back_in_the_background() -> None:
    rt = runtime("n")
    ended: list[str] = []
    handler, spawned = handler_over(rt, closed=lambda: ended.append("closed"))  # (a drain's)
    quiet, busy = Client(), Client()
    busy.session.transactions[1] = object()  # type: ignore[assignment]  # any one will do
    assert [handler.opened(c) for c in (quiet, busy)] == [1, 2]  # type: ignore[arg-type]
    handler.closed(quiet)  # type: ignore[arg-type]
    assert spawned == [] and ended == ["closed"]
    handler.closed(busy)  # type: ignore[arg-type]
    await asyncio.gather(*spawned)
    assert rt.executor.calls == [("close_session", busy.session)]
    assert ended == ["closed", "closed"] and not handler.connections
