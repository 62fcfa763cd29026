"""What the engine raises for the edge to answer: a deadline passed, the node is shutting down,
a node taken for the primary refused a write as read-only, a transaction that is unknown or
failed, an idempotency key already used, a write that applied but cannot be answered; and
`ShardFailure`, which only names the shard of a cross-shard read that failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from protocol.errors import ErrorCode
from router.errors import GeorouteError, Retry

__all__ = [
    "COMMIT_ANSWER_SECONDS",
    "CommitOutcomeUnknown",
    "EngineError",
    "IdempotencyKeyReused",
    "NodeReadOnlyError",
    "OutcomeUnknown",
    "PhaseOneTooSlow",
    "RecoveryNodeUnavailable",
    "ReferenceCopiesDiffer",
    "RequestTimeout",
    "ResultUndeliverable",
    "ShardFailure",
    "ShuttingDown",
    "TooManyTransactions",
    "TransactionAborted",
    "TransactionError",
    "TwoPhaseAborted",
    "UnknownTransaction",
    "UserMoveBusy",
    "is_read_only_refusal",
]


# How long a one-shard COMMIT's answer is awaited (as the two-phase commit's decision): a
# link that stalls after the COMMIT left (or before) is taken as lost, and the client is told
# the outcome is unknown rather than kept waiting while the stall lasts.
COMMIT_ANSWER_SECONDS = 5.0


class EngineError(GeorouteError):
    """Base of what the engine raises (no code of its own: each subclass has one)."""


class RequestTimeout(EngineError):
    """The request ran past its timeout_ms: a read may run again, a write may have applied."""

    code = ErrorCode.TIMEOUT
    retry = Retry.IF_READ


class ShuttingDown(EngineError):
    """The node is draining: the request was not run; another node may take it."""

    code = ErrorCode.SHUTTING_DOWN
    retry = Retry.ALWAYS


class NodeReadOnlyError(EngineError):
    """A write that the router sent to a node it took for the primary was refused as
    read-only (SQLSTATE 25006): the node has been demoted, e.g. during a failover. Nothing
    was applied; outside a transaction the same request may go again (`retryable`), and
    finds the new primary. A 25006 anywhere else is the statement's own doing (a
    read-only transaction the client asked for) and stays a plain PostgreSQL error."""

    code = ErrorCode.READ_ONLY
    retry = Retry.ALWAYS
    sqlstate = "25006"

    def __init__(self, cause: BaseException, *, retryable: bool) -> None:
        super().__init__(str(cause))
        if not retryable:  # inside a transaction: it is lost with its connection
            self.retry = Retry.NEVER


def is_read_only_refusal(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and getattr(exc, "sqlstate", None) == "25006"


class TransactionError(EngineError):
    """A transaction request that cannot be served; each kind is a subclass."""

    code = ErrorCode.UNKNOWN_TRANSACTION


class UnknownTransaction(TransactionError):
    """No open transaction with that id on this connection."""

    code = ErrorCode.UNKNOWN_TRANSACTION


class TransactionAborted(TransactionError):
    """The transaction failed, or the router rolled it back; the message says why."""

    code = ErrorCode.TRANSACTION_ABORTED


class TooManyTransactions(TransactionError):
    code = ErrorCode.TOO_MANY_TRANSACTIONS


class UserMoveBusy(TransactionError):
    """A user move gave up waiting on a row another transaction holds (its lock_timeout,
    sql/024): on another shard than the user's, that transaction may be waiting on the user's
    rows the move holds, a deadlock across shards no PostgreSQL can see. Rolled back on every
    shard, nothing moved: run it again."""

    code = ErrorCode.TRANSACTION_ABORTED
    sqlstate = "55P03"

    def __init__(self, user: str, cause: BaseException) -> None:
        # TRANSACTION_ABORTED is not retryable by default (a client transaction must replay
        # its statements); this one is the move's own and may simply go again. The reply's
        # flag is authoritative (PROTOCOL.md section 3).
        self.retry = Retry.ALWAYS
        super().__init__(
            f"user move of {user}: nothing was moved (rolled back on every shard): another "
            f"transaction holds a row the move needs, perhaps while it waits on the user's own "
            f"rows (an enrollment of this user, say); run the move again ({cause})")


class TwoPhaseAborted(TransactionError):
    """Nothing of the transaction committed, on any shard: `cause` (raised on `shard`) made
    it roll back. Answered as the cause's PostgreSQL error when it is one (server/failures.py),
    else as TRANSACTION_ABORTED."""

    code = ErrorCode.TRANSACTION_ABORTED

    def __init__(self, shard: str, cause: BaseException, what: str) -> None:
        self.shard = shard
        self.cause = cause
        super().__init__(f"transaction rolled back on every shard: {what} on shard {shard}: "
                         f"{cause}")

    def detail(self) -> dict[str, Any]:
        return {"shard": self.shard}


class PhaseOneTooSlow(EngineError):
    """Phase one outlasted half the grace period: the coordinator gives up rather than risk a
    decision after recovery presumed an abort."""

    code = ErrorCode.TRANSACTION_ABORTED


class OutcomeUnknown(EngineError):
    """The decision was sent to the coordinator's shard, which was lost before it answered and
    cannot be asked now. The recovery sweeper settles it (every shard alike) once it can."""

    code = ErrorCode.TRANSACTION_OUTCOME_UNKNOWN

    def __init__(self, gtid: str, coordinator: str, shards: Sequence[str], cause: BaseException):
        self.gtid = gtid
        self.coordinator = coordinator
        self.shards = tuple(shards)
        super().__init__(
            f"the outcome of transaction {gtid} is unknown: shard {coordinator}, which holds "
            f"its decision, was lost during the commit ({cause}) and cannot be asked; the "
            f"router settles it on every shard ({', '.join(self.shards)}) alike once it can")

    def detail(self) -> dict[str, Any]:
        return {"gtid": self.gtid, "coordinator": self.coordinator, "shards": list(self.shards)}


class CommitOutcomeUnknown(EngineError):
    """A COMMIT on one shard was sent, and its connection was lost (or gave no answer within
    COMMIT_ANSWER_SECONDS) before it answered: the transaction may have committed or not.
    The client must read to find out; sent again, it could apply twice."""

    code = ErrorCode.TRANSACTION_OUTCOME_UNKNOWN

    def __init__(self, shard: str, node: str, cause: BaseException):
        self.shard = shard
        super().__init__(
            f"the outcome of the transaction is unknown: its COMMIT reached {node} (shard "
            f"{shard}), whose connection was lost before it answered ({type(cause).__name__}: "
            f"{cause}); it may have committed: read to find out before running it again")

    def detail(self) -> dict[str, Any]:
        return {"shard": self.shard}


class RecoveryNodeUnavailable(EngineError):
    """The two-phase recovery sweep could not reach a node this round (it tries again)."""

    code = ErrorCode.NODE_UNAVAILABLE
    retry = Retry.ALWAYS


class ReferenceCopiesDiffer(EngineError):
    """A reference-table write did not do the same on every shard: the copies already differ
    (`georoute health` names them), or the statement computes its rows on each shard. Nothing
    was committed."""

    code = ErrorCode.CROSS_SHARD_UNSUPPORTED


class IdempotencyKeyReused(EngineError):
    """The key was already claimed by another request (on this shard): nothing was run."""

    code = ErrorCode.IDEMPOTENCY_KEY_REUSED

    def __init__(self, key: str, shard: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for another request on shard {shard} "
            "(another statement, other parameters or another batch); nothing was run: "
            "a new request needs a new key"
        )
        self.key = key
        self.shard = shard

    def detail(self) -> dict[str, Any]:
        return {"idempotency_key": self.key, "shard": self.shard}


class ResultUndeliverable(EngineError):
    """A statement that may have written ran, but its reply cannot be sent (a value with no
    wire form, a reply over router.max_frame_bytes): the client must learn that it applied,
    never read it as a failure that changed nothing. Outside a transaction the write is
    committed; inside one (`tx`), the statement ran in it and commits or rolls back with it.
    `reason` says why its reply cannot be sent. Never retryable: it would apply twice."""

    code = ErrorCode.RESULT_UNDELIVERABLE

    def __init__(self, status: str, rowcount: int, route: list[str] | None,
                 ryw_token: str | None, tx: int | None, reason: str) -> None:
        self.status = status
        self.rowcount = rowcount
        self.route = route
        self.ryw_token = ryw_token
        self.tx = tx
        self.reason = reason
        if tx is None:
            what = f"the statement ran and was committed ({status}), but its result cannot be sent"
            advice = "do not send it again"
        else:
            what = (f"the statement ran in transaction {tx} ({status}), which is still open, "
                    "but its result cannot be sent")
            advice = "it commits or rolls back with the transaction"
        super().__init__(f"{what}: {reason}; {advice}")

    def detail(self) -> dict[str, Any]:
        """The Error reply's detail (PROTOCOL.md, section 3)."""
        detail: dict[str, Any] = {
            "outcome": "applied",
            "status": self.status,
            "rowcount": self.rowcount,
            "ryw_token": self.ryw_token,
            "route": self.route,
        }
        if self.tx is not None:
            detail["tx"] = self.tx
        return detail


class ShardFailure(Exception):
    """One shard of a cross-shard read failed: `cause` is what it raised. Not an error of its
    own, so no code: the reply is the one `cause` gives, naming the shard
    (router/server/failures.py)."""

    def __init__(self, shard: str, cause: BaseException) -> None:
        super().__init__(f"shard {shard}: {cause}")
        self.shard = shard
        self.cause = cause
