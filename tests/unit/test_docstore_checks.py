"""What the router refuses before a document-store request reaches the store: aggregation
stages that write elsewhere or read outside this database, server-side JavaScript anywhere,
and collection names that are not plain. Nothing here needs a running store: the refusals
come first (a client pointed at a closed port proves it)."""

from __future__ import annotations

from typing import Any

import pytest

from router.backend.docstore import DocOperationError, DocStore, _check_pipeline
from router.config import DocumentStoreConfig

REFUSED_PIPELINES: list[Any] = [
    [{"$out": "stolen"}],
    [{"$merge": {"into": {"db": "admin", "coll": "x"}}}],
    [{"$lookup": {"from": "system.users", "localField": "a", "foreignField": "b", "as": "c"}}],
    [{"$lookup": {"from": {"db": "other", "coll": "x"}, "as": "c", "pipeline": []}}],
    [{"$unionWith": {"coll": "x", "pipeline": [{"$out": "y"}]}}],
    [{"$facet": {"a": [{"$merge": "y"}]}}],
    [{"$changeStream": {}}],
    [{"$match": {}, "$out": "x"}],  # two stages in one map
    {"$match": {}},  # not a list
]


@pytest.mark.parametrize("pipeline", REFUSED_PIPELINES)
def test_aggregation_stages_that_reach_beyond_the_collection_are_refused(pipeline: Any) -> None:
    with pytest.raises(DocOperationError):
        _check_pipeline(pipeline)


def test_reading_stages_and_lookups_in_this_database_pass() -> None:
    _check_pipeline([
        {"$match": {"course_id": 1}},
        {"$lookup": {"from": "lessons", "localField": "a", "foreignField": "b", "as": "c"}},
        {"$unionWith": "archived_lessons"},
        {"$facet": {"n": [{"$count": "n"}], "top": [{"$sort": {"x": -1}}, {"$limit": 3}]}},
    ])


@pytest.mark.parametrize(("collection", "op", "args"), [
    ("lessons", "find", {"filter": {"$where": "sleep(10000)"}}),
    ("lessons", "aggregate", {"pipeline": [{"$match": {"$expr": {"$function": {
        "body": "function() { return true }", "args": [], "lang": "js"}}}}]}),
    ("lessons", "aggregate", {"pipeline": [{"$group": {"_id": 1, "x": {"$accumulator": {}}}}]}),
    ("lessons", "aggregate", {"pipeline": [{"$out": "stolen"}]}),
    ("lessons\n", "find", {}),
    ("system.users", "find", {}),
])
async def test_refused_before_the_store_is_asked(collection: str, op: str,
                                                 args: dict[str, Any]) -> None:
    store = DocStore(DocumentStoreConfig(uri="mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1"))
    try:
        with pytest.raises(DocOperationError):
            await store.run(collection, op, args)
    finally:
        await store.close()


def test_the_topology_report_names_only_the_document_stores_hosts() -> None:
    from router.node import _hosts_of

    uri = ("mongodb://app:s3cret@db1:27017,db2/?tls=true&tlsCertificateKeyFilePassword=pw"
           "&authMechanismProperties=AWS_SESSION_TOKEN:tok")
    assert _hosts_of(uri) == "db1:27017,db2:27017"
    assert _hosts_of("not a uri") == "?"
