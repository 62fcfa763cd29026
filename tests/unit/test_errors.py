"""The router's errors: every class carries its wire code and retryability, each package keeps
them in its errors.py, every error reaches the client with the code and detail PROTOCOL.md
section 3 gives it, and our own bugs reach it as INTERNAL with a reference to the log."""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import pkgutil
import re
from types import ModuleType
from typing import Any

import asyncpg
import pytest

import client
import router
from protocol import Error
from protocol.errors import RETRYABLE_CODES, EncodeError, ErrorCode
from router.backend.errors import (
    AuthError,
    BackendError,
    DocOperationError,
    DocTimeoutError,
    DocUnavailableError,
    DocUnknownOperationError,
    DuplicateDocumentError,
    NodeUnavailableError,
    PipelineError,
    PoolTimeoutError,
    ResultValueError,
    TLSRefused,
    Unsupported,
)
from router.core.errors import (
    CoreError,
    CrossShardError,
    MissingShardKeyError,
    Refusal,
    RoutingError,
    ScatterRefused,
    SqlParseError,
    UnknownShardError,
    UnsupportedStatementError,
)
from router.engine.errors import (
    EngineError,
    IdempotencyKeyReused,
    NodeReadOnlyError,
    RequestTimeout,
    ResultUndeliverable,
    ShardFailure,
    ShuttingDown,
    TooManyTransactions,
    TransactionAborted,
    UnknownTransaction,
)
from router.errors import ConfigError, GeorouteError, Retry
from router.logs import JsonFormatter
from router.server.errors import ServerError, UnsupportedRequest
from router.server.failures import failure_for

# Bases that only group a package's errors: they have no code, so no subclass inherits one
# by accident.
BASES = {GeorouteError, CoreError, EngineError, BackendError, ServerError}
# Not an error of its own: the reply is its cause's, naming the shard.
ENVELOPES = {ShardFailure}
PACKAGES = ("router.core", "router.engine", "router.backend", "router.server", "router.ha")


def _router_modules() -> list[ModuleType]:
    names = [m.name for m in pkgutil.walk_packages(router.__path__, "router.")]
    return [importlib.import_module(name) for name in names]


def _exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module of router/."""
    found: list[type[BaseException]] = []
    for module in _router_modules():
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def _error_classes() -> list[type[GeorouteError]]:
    classes = [c for c in _exception_classes() if issubclass(c, GeorouteError)]
    return [c for c in classes if c not in BASES]


def test_the_walk_finds_every_package_errors() -> None:
    classes = set(_error_classes())
    assert {SqlParseError, RequestTimeout, NodeUnavailableError, UnsupportedRequest,
            ConfigError} <= classes
    assert len(classes) > 30


def test_every_exception_class_of_the_router_is_one_of_its_errors() -> None:
    strays = [f"{c.__module__}.{c.__qualname__}" for c in _exception_classes()
              if not issubclass(c, GeorouteError) and c not in ENVELOPES]
    assert strays == []


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__qualname__)
def test_every_error_class_has_a_wire_code_and_retryability(cls: type[GeorouteError]) -> None:
    assert isinstance(getattr(cls, "code", None), ErrorCode), f"{cls.__qualname__} has no code"
    assert isinstance(cls.retry, Retry)
    # The class's retryability agrees with the code's default (PROTOCOL.md section 3).
    if cls.retry is Retry.ALWAYS:
        assert cls.code in RETRYABLE_CODES
    if cls.code in RETRYABLE_CODES:
        assert cls.retry is not Retry.NEVER


def test_grouping_bases_have_no_code_to_hand_down() -> None:
    assert all("code" not in base.__dict__ for base in BASES)


def test_a_packages_errors_live_in_its_errors_module() -> None:
    elsewhere = [f"{c.__module__}.{c.__qualname__}" for c in _error_classes()
                 if c.__module__.startswith(PACKAGES) and not c.__name__.startswith("_")
                 and not c.__module__.endswith(".errors")]
    assert elsewhere == []


def test_retry_allows() -> None:
    assert [r.allows(True) for r in Retry] == [False, True, True]
    assert [r.allows(False) for r in Retry] == [False, True, False]


# ---- every error, as the client sees it -----------------------------------------------------

_BAD_VALUE = ResultValueError("time", "24:00:00 is past Python's last time of day")
_BAD_VALUE.column = "t"
_APPLIED_WRITE = ResultValueError("timestamptz", "out of Python's range (years 1-9999)")
_APPLIED_WRITE.status = "INSERT 0 1"
_READ_ONLY = asyncpg.PostgresError.new({"C": "25006", "M": "read-only", "S": "ERROR"})
_UNDELIVERED = ResultUndeliverable("INSERT 0 1", 1, ["europe", "n1", "primary"], "europe:42",
                                   None, "too large")

# (error, retryable for a read, for a write, sqlstate, detail): codes as before the
# hierarchy, when failures.py decided each one.
CASES: list[tuple[BaseException, ErrorCode, bool, bool, str | None, dict[str, Any]]] = [
    (SqlParseError("syntax error", 6), ErrorCode.SQL_PARSE_ERROR, False, False, "42601",
     {"position": 7}),
    (SqlParseError("too long", None, "54000"), ErrorCode.SQL_PARSE_ERROR, False, False, "54000",
     {"position": None}),
    (UnsupportedStatementError("BEGIN"), ErrorCode.INVALID_REQUEST, False, False, None, {}),
    (RoutingError("empty batch"), ErrorCode.INVALID_REQUEST, False, False, None, {}),
    (MissingShardKeyError(["users.user_id"], "users", "user_id"), ErrorCode.MISSING_SHARD_KEY,
     False, False, None, {"wanted": ["users.user_id"], "key": "user_id", "table": "users"}),
    (MissingShardKeyError(["a shard hint"]), ErrorCode.MISSING_SHARD_KEY, False, False, None,
     {"wanted": ["a shard hint"]}),
    (UnknownShardError("no such shard", "mars"), ErrorCode.UNKNOWN_SHARD, False, False, None,
     {"shard": "mars"}),
    (UnknownShardError("id names shard 9"), ErrorCode.UNKNOWN_SHARD, False, False, None, {}),
    (CrossShardError("two shards"), ErrorCode.CROSS_SHARD_UNSUPPORTED, False, False, None, {}),
    (ScatterRefused(Refusal.WINDOW, "rank()", "not merged"), ErrorCode.CROSS_SHARD_UNSUPPORTED,
     False, False, None, {}),
    (RequestTimeout("took longer"), ErrorCode.TIMEOUT, True, False, None, {}),
    (ShuttingDown("draining"), ErrorCode.SHUTTING_DOWN, True, True, None, {}),
    (NodeReadOnlyError(_READ_ONLY, retryable=True), ErrorCode.READ_ONLY, True, True, "25006", {}),
    (NodeReadOnlyError(_READ_ONLY, retryable=False), ErrorCode.READ_ONLY, False, False, "25006",
     {}),
    (UnknownTransaction("no open transaction 3"), ErrorCode.UNKNOWN_TRANSACTION, False, False,
     None, {}),
    (TransactionAborted("an earlier statement failed"), ErrorCode.TRANSACTION_ABORTED, False,
     False, None, {}),
    (TooManyTransactions("at most 64"), ErrorCode.TOO_MANY_TRANSACTIONS, False, False, None, {}),
    (IdempotencyKeyReused("k1", "europe"), ErrorCode.IDEMPOTENCY_KEY_REUSED, False, False, None,
     {"idempotency_key": "k1", "shard": "europe"}),
    (_UNDELIVERED, ErrorCode.RESULT_UNDELIVERABLE, False, False, None,
     {"outcome": "applied", "status": "INSERT 0 1", "rowcount": 1, "ryw_token": "europe:42",
      "route": ["europe", "n1", "primary"]}),
    (NodeUnavailableError("down"), ErrorCode.NODE_UNAVAILABLE, True, True, None, {}),
    (NodeUnavailableError("lost", sent=True), ErrorCode.NODE_UNAVAILABLE, True, False, None, {}),
    (PoolTimeoutError("no connection free"), ErrorCode.POOL_EXHAUSTED, True, True, None, {}),
    (PipelineError("closed"), ErrorCode.NODE_UNAVAILABLE, True, False, None, {}),
    (TLSRefused("no TLS"), ErrorCode.NODE_UNAVAILABLE, True, True, None, {}),
    (AuthError("bad signature"), ErrorCode.NODE_UNAVAILABLE, True, True, None, {}),
    (_BAD_VALUE, ErrorCode.POSTGRES_ERROR, False, False, "22008",
     {"raised_by": "router", "column": "t", "type": "time"}),
    (DocOperationError("bad"), ErrorCode.DOC_ERROR, False, False, None, {}),
    (DocUnknownOperationError("no op"), ErrorCode.DOC_UNKNOWN_OPERATION, False, False, None, {}),
    (DocUnavailableError("unreachable"), ErrorCode.DOC_UNAVAILABLE, True, True, None, {}),
    (DuplicateDocumentError("dup"), ErrorCode.DOC_DUPLICATE_KEY, False, False, None,
     {}),
    (DocTimeoutError("slow"), ErrorCode.TIMEOUT, True, False, None, {}),
    (UnsupportedRequest("unknown admin op"), ErrorCode.INVALID_REQUEST, False, False, None, {}),
    (EncodeError("over the frame limit"), ErrorCode.NOT_ENCODABLE, False, False, None, {}),
    (_READ_ONLY, ErrorCode.POSTGRES_ERROR, False, False, "25006", {}),
    (asyncpg.InterfaceError("the server expects 1 argument for this query, 2 were passed"),
     ErrorCode.INVALID_REQUEST, False, False, None, {}),
]


@pytest.mark.parametrize(("exc", "code", "read_retry", "write_retry", "sqlstate", "detail"),
                         CASES, ids=lambda v: type(v).__name__ if isinstance(v, BaseException)
                         else None)
def test_each_error_reaches_the_client_as_section_3_says(
    exc: BaseException, code: ErrorCode, read_retry: bool, write_retry: bool,
    sqlstate: str | None, detail: dict[str, Any],
) -> None:
    read, write = failure_for(exc, read_only=True), failure_for(exc, read_only=False)
    assert (read.code, read.retryable, read.sqlstate, read.detail) == (
        code, read_retry, sqlstate, detail)
    assert (write.code, write.retryable) == (code, write_retry)
    assert str(exc) in read.message


def test_a_value_lost_after_a_completed_write_says_the_write_applied() -> None:
    write = failure_for(_APPLIED_WRITE, read_only=False)
    assert write.code is ErrorCode.RESULT_UNDELIVERABLE and not write.retryable
    assert write.detail["outcome"] == "applied" and write.detail["status"] == "INSERT 0 1"
    read = failure_for(_APPLIED_WRITE, read_only=True)  # a read changed nothing
    assert read.code is ErrorCode.POSTGRES_ERROR


def test_a_shard_of_a_cross_shard_read_is_named() -> None:
    failure = failure_for(ShardFailure("asia", PoolTimeoutError("no connection free")))
    assert (failure.code, failure.retryable) == (ErrorCode.POOL_EXHAUSTED, True)
    assert failure.message == "shard asia: no connection free"
    assert failure.detail == {"shard": "asia"}


# ---- our own bugs ----------------------------------------------------------------------------


def _raised(exc: BaseException) -> BaseException:
    """`exc` with a traceback, as a bug's exception has."""
    try:
        raise exc
    except BaseException as caught:
        return caught


_REFERENCE = re.compile(r"^[0-9a-f]{12}$")


@pytest.mark.parametrize("bug", [TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
                                 ValueError("too many values to unpack"), KeyError("shard"),
                                 AttributeError("'NoneType' object has no attribute 'pool'")],
                         ids=lambda e: type(e).__name__)
def test_a_bug_in_router_code_is_internal_with_a_reference_in_the_log(
    bug: BaseException, caplog: pytest.LogCaptureFixture,
) -> None:
    """Bug: a TypeError or ValueError raised in router code was answered as the client's
    bad input (3005 INVALID_REQUEST), and nothing was logged."""
    caplog.set_level(logging.ERROR, logger="georoute.server")
    failure = failure_for(_raised(bug))
    assert failure.code is ErrorCode.INTERNAL and not failure.retryable
    reference = failure.detail["reference"]
    assert _REFERENCE.match(reference)
    assert reference in failure.message
    (record,) = [r for r in caplog.records if reference in r.getMessage()]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[1] is bug  # with its traceback


def test_each_internal_error_gets_its_own_reference() -> None:
    first, second = (failure_for(_raised(TypeError("x"))) for _ in range(2))
    assert first.detail["reference"] != second.detail["reference"]


def test_one_of_our_errors_that_must_never_reach_a_client_is_internal_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="georoute.server")
    failure = failure_for(_raised(Unsupported()))
    assert failure.code is ErrorCode.INTERNAL
    assert any(failure.detail["reference"] in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("message", ["cannot perform operation: another operation is in progress",
                                     "cannot perform operation: connection is closed"])
def test_a_drivers_refusal_of_our_use_of_a_connection_is_internal(message: str) -> None:
    """Bug: every asyncpg InterfaceError was answered 3005 "invalid parameters"; these say the
    router used a connection wrongly, which is never the request's fault."""
    failure = failure_for(_raised(asyncpg.InterfaceError(message)))
    assert failure.code is ErrorCode.INTERNAL and "reference" in failure.detail


def test_the_drivers_refusal_of_the_requests_parameters_is_the_clients_error() -> None:
    for message in ("the server expects 1 argument for this query, 2 were passed",
                    "the server expects 2 arguments for this query, 1 was passed",
                    "the number of query arguments cannot exceed 32767"):
        failure = failure_for(asyncpg.InterfaceError(message))
        assert failure.code is ErrorCode.INVALID_REQUEST and message in failure.message


def test_a_bug_on_one_shard_of_a_cross_shard_read_is_internal_and_named() -> None:
    failure = failure_for(ShardFailure("europe", _raised(TypeError("x"))))
    assert failure.code is ErrorCode.INTERNAL
    assert failure.detail["shard"] == "europe" and _REFERENCE.match(failure.detail["reference"])


def test_json_log_lines_keep_the_traceback() -> None:
    """Bug: --log-json dropped exc_info, so an internal error's traceback was lost."""
    bug = _raised(TypeError("boom"))
    record = logging.LogRecord("georoute.server", logging.ERROR, __file__, 1,
                               "internal error %s", ("abc",), (type(bug), bug, bug.__traceback__))
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "internal error abc"
    assert "Traceback" in line["exc"] and "TypeError: boom" in line["exc"]


def test_the_client_gives_the_reference_of_an_internal_error() -> None:
    error = client.error_from_reply(Error(7, ErrorCode.INTERNAL, "INTERNAL",
                                          "internal error (reference 0123456789ab)",
                                          detail={"reference": "0123456789ab"}))
    assert type(error) is client.InternalError
    assert error.reference == "0123456789ab" and not error.retryable
    draining = client.error_from_reply(Error(8, ErrorCode.SHUTTING_DOWN, "SHUTTING_DOWN",
                                             "draining", retryable=True))
    assert isinstance(draining, client.InternalError) and draining.reference is None

