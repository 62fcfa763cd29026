"""Ids that name no row the API can find: every operation of the API's table that takes an id
(in its path, or a uuid in its body) called with a random uuid4 (no georoute id: the router
finds no shard key in it) and with a georoute id of a shard this cluster does not have (the
router: unknown shard). Each answers a documented 4xx problem (404 for the row not found,
403 or 422 where the operation says so), never a 5xx: an id is the caller's input, and no
row has such an id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.domain import Domain
from router.core.ids import shard_number_of
from tests.api.openapi_requests import Call, Context, calls, make_context
from tests.support.ids import new_id

UNCONFIGURED_SHARD = 200  # router.toml's shards are numbered 1 to 3


@pytest.fixture
async def context(http: httpx.AsyncClient, domain: Domain, category_id: str) -> Context:
    return await make_context(http, domain, category_id)


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _id_fields(call: Call) -> Iterator[tuple[str, tuple[Any, ...], Any]]:
    """(where, leaf, current value) of every id the call sends: path parameters, and body
    strings that are uuids (the ids the request builder filled in)."""
    for name, value in call.params["path"].items():
        yield "path", (name,), value
    if call.body is not None:
        for where, leaf in call.fields():
            if where != "body":
                continue
            found: Any = call.body
            for step in leaf:
                found = found[step]
            if _is_uuid(found):
                yield "body", leaf, found


async def test_every_id_of_no_shard_is_a_4xx_problem(
    http: httpx.AsyncClient, context: Context, app: Any,
) -> None:
    foreign = str(new_id(UNCONFIGURED_SHARD))
    assert shard_number_of(foreign) == UNCONFIGURED_SHARD
    tried = 0
    failures = []
    for call in calls(app.state.openapi, context):
        for where, leaf, _ in list(_id_fields(call)):
            for label, value in (("a random uuid4", str(uuid.uuid4())),
                                 ("an id of an unconfigured shard", foreign)):
                r = await call.with_payload(where, leaf, value).send(http)
                tried += 1
                name = ".".join(str(p) for p in leaf)
                if r.status_code >= 500 or (
                        r.status_code >= 400
                        and r.headers.get("content-type") != "application/problem+json"):
                    failures.append(f"{call.method} {call.template} {where} {name} = {label}: "
                                    f"{r.status_code} {r.text[:200]}")
                elif r.status_code < 400 and where == "path":
                    # A path id names the row the operation is about: none has this id.
                    failures.append(f"{call.method} {call.template} {name} = {label}: "
                                    f"{r.status_code} (a row was found)")
    assert tried >= 40  # every operation with an id, two kinds of id each
    assert not failures, "\n".join(failures)
