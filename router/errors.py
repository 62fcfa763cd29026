"""The root of the router's errors. Each package keeps its own in one module (core/errors.py,
engine/errors.py, backend/errors.py, server/errors.py); every class says what a client is told
if one reaches it: its wire code (protocol/errors.py) and when the same request may go again.
Anything else that reaches a client (a TypeError in our code, say) is our bug: INTERNAL, with a
reference under which the router logged it (router/server/failures.py)."""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from protocol.errors import ErrorCode

__all__ = [
    "ClusterError",
    "ConfigError",
    "GeorouteError",
    "MigrationError",
    "PortInUseError",
    "Retry",
    "RouterCallError",
]


class Retry(enum.Enum):
    """When the same request may be sent again, on any node, with a chance of success."""

    NEVER = "never"  # it would fail the same way, or it may have applied
    ALWAYS = "always"  # nothing was applied
    IF_READ = "if_read"  # a read may run again; a write may have applied

    def allows(self, read_only: bool) -> bool:
        return self is Retry.ALWAYS or (self is Retry.IF_READ and read_only)


class GeorouteError(Exception):
    """Base of every error the router raises on its own behalf. A class gives `code`; `retry`
    is the class's answer, which an instance may narrow (a connection lost after the statement
    was sent); `sqlstate` and `detail()` fill in the Error reply (PROTOCOL.md section 3)."""

    code: ClassVar[ErrorCode]
    retry: Retry = Retry.NEVER
    sqlstate: str | None = None

    def detail(self) -> dict[str, Any]:
        return {}


# Faults of our own configuration or tooling: never the client's, so INTERNAL if one ever
# reached a client.


class ConfigError(GeorouteError):
    """router.toml (or its environment) is invalid. `key` names the offending key."""

    code = ErrorCode.INTERNAL

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"invalid config: {key}: {message}")


class ClusterError(GeorouteError):
    """The local cluster could not be started, inspected or stopped."""

    code = ErrorCode.INTERNAL


class PortInUseError(ClusterError):
    """A port the cluster needs is already taken by a process we did not start."""


class MigrationError(GeorouteError):
    """Schema migrations could not be applied (e.g. shards at different versions)."""

    code = ErrorCode.INTERNAL


class RouterCallError(GeorouteError):
    """A tool's request to a router node (`georoute user move`) was refused, or the node could
    not be reached; the message says which."""

    code = ErrorCode.INTERNAL
