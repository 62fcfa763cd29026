"""The fingerprint stored with an idempotency key: equal requests give equal fingerprints,
and anything that changes what a keyed write does gives another one."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

from protocol import Json
from router.engine.idempotency import fingerprint, pack_reply

SQL = "UPDATE rt_items SET payload = $2 WHERE item_id = $1"
ITEM = uuid.UUID("018f0000-0000-8001-8000-000000000001")


def test_equal_requests_give_equal_fingerprints() -> None:
    params = [ITEM, Decimal("1.50"), dt.datetime(2026, 1, 2, tzinfo=dt.UTC), Json({"a": [1]})]
    first = fingerprint("query", "europe", [(SQL, params)])
    assert len(first) == 32
    again = [ITEM, Decimal("1.50"), dt.datetime(2026, 1, 2, tzinfo=dt.UTC), Json({"a": [1]})]
    assert fingerprint("query", "europe", [(SQL, tuple(again))]) == first


def test_whatever_decides_the_outcome_changes_the_fingerprint() -> None:
    base = fingerprint("query", "europe", [(SQL, [ITEM, "a"])])
    others = [
        fingerprint("query", "europe", [("DELETE FROM rt_items WHERE item_id = $1", [ITEM])]),
        fingerprint("query", "europe", [(SQL, [ITEM, "b"])]),
        fingerprint("query", "europe", [(SQL, [ITEM, None])]),
        fingerprint("query", "asia", [(SQL, [ITEM, "a"])]),
        fingerprint("batch", "europe", [(SQL, [ITEM, "a"])]),
        fingerprint("batch", "europe", [(SQL, [ITEM, "a"]), (SQL, [ITEM, "a"])]),
        fingerprint("query", "europe", [(SQL, [ITEM, 1])]),
        fingerprint("query", "europe", [(SQL, [ITEM, 1.0])]),
        fingerprint("query", "europe", [(SQL, [ITEM, b"a"])]),
    ]
    assert len({base, *others}) == len(others) + 1


def test_batch_order_matters() -> None:
    one, two = (SQL, [ITEM, "a"]), (SQL, [ITEM, "b"])
    assert fingerprint("batch", "europe", [one, two]) != fingerprint("batch", "europe", [two, one])


def test_a_reply_that_cannot_be_sent_is_not_stored() -> None:
    assert pack_reply(["n"], [(1,)], 1024) is not None
    assert pack_reply(["n"], [("x" * 2000,)], 1024) is None  # over the frame limit
    assert pack_reply(["n"], [(object(),)], 1024) is None  # no wire form
