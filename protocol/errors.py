"""The stable numeric error-code table of the wire protocol, and the exceptions the sans-I/O
codec raises. Codes never change meaning; new ones are only ever added."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "RETRYABLE_CODES",
    "EncodeError",
    "ErrorCode",
    "FrameTooLarge",
    "InvalidRequest",
    "MalformedFrame",
    "ProtocolError",
    "UnknownMessageType",
    "UnsupportedVersion",
    "is_retryable",
]


class ErrorCode(IntEnum):
    """Error codes carried by the `Error` reply. The thousands digit is the family."""

    # 1xxx: protocol (the peer broke the framing or message rules)
    MALFORMED_FRAME = 1001
    FRAME_TOO_LARGE = 1002
    UNKNOWN_MESSAGE_TYPE = 1003
    UNSUPPORTED_VERSION = 1004
    HANDSHAKE_REQUIRED = 1005  # a request arrived before a successful Hello
    NOT_ENCODABLE = 1006  # a value has no wire representation (raised locally)
    CONNECTION_LOST = 1100  # client side only: the connection dropped; never sent on the wire
    # 2xxx: authentication
    AUTH_FAILED = 2001
    PERMISSION_DENIED = 2002
    # 3xxx: routing
    MISSING_SHARD_KEY = 3001  # detail: {"key": column name, "table": table name}
    UNKNOWN_SHARD = 3002  # detail: {"shard": name}
    SQL_PARSE_ERROR = 3003  # detail: {"position": 1-based character offset}
    CROSS_SHARD_UNSUPPORTED = 3004  # the statement would touch several shards
    INVALID_REQUEST = 3005  # e.g. unknown consistency level, bad hint types
    IDEMPOTENCY_KEY_REUSED = 3006  # the key already names another request; nothing was run
    # 4xxx: backend
    NODE_UNAVAILABLE = 4001  # retryable: no healthy node for the target right now
    POSTGRES_ERROR = 4002  # sqlstate is set
    TIMEOUT = 4003  # the statement ran past timeout_ms (it may or may not have applied)
    POOL_EXHAUSTED = 4004  # retryable
    READ_ONLY = 4005  # retryable: a write reached a node that is (now) a replica, e.g. failover
    RESULT_UNDELIVERABLE = 4006  # it applied, but its reply cannot be sent: detail says how
    # 5xxx: transactions
    UNKNOWN_TRANSACTION = 5001
    TRANSACTION_ABORTED = 5002  # an earlier statement failed; only Rollback is accepted
    TOO_MANY_TRANSACTIONS = 5003
    TRANSACTION_OUTCOME_UNKNOWN = 5004  # a two-phase commit lost its decision's shard mid-way
    # 6xxx: document store
    DOC_ERROR = 6001
    DOC_DUPLICATE_KEY = 6002
    DOC_UNKNOWN_OPERATION = 6003
    DOC_UNAVAILABLE = 6004  # retryable
    # 9xxx: internal
    INTERNAL = 9001
    SHUTTING_DOWN = 9002  # retryable: the router node is draining; go to another
    TOO_MANY_CONNECTIONS = 9003  # retryable: the node is at its connection limit; go to another


# Codes whose Error replies default to retryable=True. The reply's own `retryable` flag is
# authoritative; this table is the default a server uses when building one.
RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.POOL_EXHAUSTED,
        ErrorCode.READ_ONLY,
        ErrorCode.DOC_UNAVAILABLE,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.CONNECTION_LOST,
    }
)


def is_retryable(code: int) -> bool:
    return code in RETRYABLE_CODES


class ProtocolError(Exception):
    """Base of every error the codec raises. `code` is the ErrorCode to report to the peer."""

    code: ErrorCode = ErrorCode.MALFORMED_FRAME
    # The stream can no longer be trusted (the frame could not be parsed): the connection
    # must close. False for a well-framed message that is only refused.
    fatal = True

    def __init__(self, message: str, *, request_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The id of the offending request, when it could be read; lets a server reply to it.
        self.request_id = request_id


class MalformedFrame(ProtocolError):
    """The body is not valid MessagePack, or not a well-formed message."""

    code = ErrorCode.MALFORMED_FRAME


class FrameTooLarge(ProtocolError):
    """The length prefix announces a body larger than the configured maximum."""

    code = ErrorCode.FRAME_TOO_LARGE


class UnknownMessageType(ProtocolError):
    """The body's type code is not one this protocol version defines (the frame itself was
    read: only this message is refused)."""

    code = ErrorCode.UNKNOWN_MESSAGE_TYPE
    fatal = False


class InvalidRequest(ProtocolError):
    """A well-framed request whose fields are missing or hold bad values (an unknown
    consistency, a str for timeout_ms): only this request is refused."""

    code = ErrorCode.INVALID_REQUEST
    fatal = False


class UnsupportedVersion(ProtocolError):
    """No protocol version is common to both peers."""

    code = ErrorCode.UNSUPPORTED_VERSION


class EncodeError(ProtocolError):
    """Our own fault: a message or value cannot be encoded (or exceeds the frame limit)."""

    code = ErrorCode.NOT_ENCODABLE
