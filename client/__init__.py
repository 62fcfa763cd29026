"""georoute's asyncio client: `client = await connect("georoute://h1:6600,h2:6600", token=...)`.
A thin layer over protocol/: a pool of pipelined connections, retries, read-your-writes."""

from client.client import Client, connect, looks_read_only
from client.connection import Connection
from client.docs import Collection
from client.dsn import parse_dsn
from client.errors import (
    AuthError,
    BackendError,
    ConnectionLostError,
    CrossShardError,
    DocumentStoreError,
    DuplicateKeyError,
    GeorouteError,
    InternalError,
    InvalidRequestError,
    MissingShardKeyError,
    NodeUnavailableError,
    NoRouterAvailableError,
    PoolExhaustedError,
    PostgresError,
    ProtocolViolationError,
    ReadOnlyError,
    RequestTimeoutError,
    RoutingError,
    ShuttingDownError,
    SQLSyntaxError,
    TransactionAbortedError,
    TransactionError,
    UnknownShardError,
    UnknownTransactionError,
    UnsupportedVersionError,
    error_from_reply,
)
from client.record import Record
from client.transaction import Transaction
from protocol import Consistency, Isolation, Json, ObjectId

__all__ = [
    "AuthError",
    "BackendError",
    "Client",
    "Collection",
    "Connection",
    "ConnectionLostError",
    "Consistency",
    "CrossShardError",
    "DocumentStoreError",
    "DuplicateKeyError",
    "GeorouteError",
    "InternalError",
    "InvalidRequestError",
    "Isolation",
    "Json",
    "MissingShardKeyError",
    "NoRouterAvailableError",
    "NodeUnavailableError",
    "ObjectId",
    "PoolExhaustedError",
    "PostgresError",
    "ProtocolViolationError",
    "ReadOnlyError",
    "Record",
    "RequestTimeoutError",
    "RoutingError",
    "SQLSyntaxError",
    "ShuttingDownError",
    "Transaction",
    "TransactionAbortedError",
    "TransactionError",
    "UnknownShardError",
    "UnknownTransactionError",
    "UnsupportedVersionError",
    "connect",
    "error_from_reply",
    "looks_read_only",
    "parse_dsn",
]
