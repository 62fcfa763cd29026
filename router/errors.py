"""The router's error hierarchy: faults in our configuration or cluster, kept apart from the
protocol's wire errors (protocol/errors.py), which are what clients see."""

from __future__ import annotations

__all__ = ["ClusterError", "ConfigError", "GeorouteError", "MigrationError", "PortInUseError"]


class GeorouteError(Exception):
    """Base of every error the router raises on its own behalf."""


class ConfigError(GeorouteError):
    """router.toml (or its environment) is invalid. `key` names the offending key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"invalid config: {key}: {message}")


class ClusterError(GeorouteError):
    """The local cluster could not be started, inspected or stopped."""


class PortInUseError(ClusterError):
    """A port the cluster needs is already taken by a process we did not start."""


class MigrationError(GeorouteError):
    """Schema migrations could not be applied (e.g. shards at different versions)."""
