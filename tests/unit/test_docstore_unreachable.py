"""A document store that is down is refused fast, typed and retryable: DOC_UNAVAILABLE once the
driver's server selection gives up (3 s), not a TIMEOUT at the operation's 10 s bound. pymongo
lets timeoutMS override serverSelectionTimeoutMS, so with both set every request to a dead
store waited 10 s, and a client with a shorter timeout saw its write time out (outcome
unknown, not retryable) instead of "unavailable, nothing sent"."""

from __future__ import annotations

import socket
import time

import pytest

from router.backend.docstore import DocStore
from router.backend.errors import DocUnavailableError
from router.config import DocumentStoreConfig
from router.errors import Retry


def _closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (just released by us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_dead_store_is_unavailable_within_the_server_selection_bound() -> None:
    port = _closed_port()
    store = DocStore(DocumentStoreConfig(uri=f"mongodb://127.0.0.1:{port}/?retryWrites=false",
                                         database="georoute_down"))
    try:
        started = time.monotonic()
        with pytest.raises(DocUnavailableError) as refused:
            await store.run("user_preferences", "find_one", {"filter": {"_id": "x"}})
        took = time.monotonic() - started
    finally:
        await store.close()
    assert refused.value.retry is Retry.ALWAYS  # nothing was sent
    assert 2.5 <= took < 6, f"refused after {took:.1f}s"
