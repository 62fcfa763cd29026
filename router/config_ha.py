"""The [heartbeat] and [failover] sections of router.toml: high availability's settings and
their checks (router/config.py loads them with the rest; README, "High availability")."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from router.errors import ConfigError

__all__ = [
    "FailoverConfig",
    "FailoverMode",
    "HeartbeatConfig",
    "parse_peer",
    "validate_ha",
]


@dataclass(frozen=True, slots=True)
class HeartbeatConfig:
    host: str = "127.0.0.1"
    port: int = 6700
    interval_seconds: float = 0.5
    suspect_after_seconds: float = 2.0
    dead_after_seconds: float = 5.0
    alive_after_heartbeats: int = 3
    secret_env: str = "GEOROUTE_HEARTBEAT_SECRET"
    peers: tuple[str, ...] = ()  # "name@host:port" of each other router node

    @property
    def enabled(self) -> bool:
        return bool(self.port and self.peers)

    def peer_addresses(self) -> dict[str, tuple[str, int]]:
        """Each peer's name -> (host, port); validated at load, so this cannot fail."""
        return {name: (host, port) for name, host, port in map(parse_peer, self.peers)}


def parse_peer(spec: str) -> tuple[str, str, int]:
    """A `heartbeat.peers` entry, `name@host:port`, as (name, host, port)."""
    name, at, address = spec.partition("@")
    host, colon, port = address.rpartition(":")
    if not at or not name or not colon or not host or not port.isdigit():
        raise ValueError(f"expected 'name@host:port', got {spec!r}")
    if len(name) > 64:  # protocol.heartbeat.MAX_NAME_CHARS
        raise ValueError(f"{name!r} is longer than 64 characters")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is out of range")
    return name, host, int(port)


class FailoverMode(enum.Enum):
    OFF = "off"  # a dead primary's writes fail (retryable) until a person acts
    EXTERNAL = "external"  # something else promotes; the router follows (router/ha/discovery.py)
    MANAGED = "managed"  # the routers promote by quorum (router/ha/promoter.py)


@dataclass(frozen=True, slots=True)
class FailoverConfig:
    mode: str = "off"
    down_after_seconds: float = 1.0
    write_buffer_seconds: float = 2.0
    # Managed mode: where this node keeps each shard's newest timeline seen writable
    # (router/ha/memory.py); "" = <cluster.state_dir>/failover-<node_name>.json.
    state_file: str = ""


def validate_ha(h: HeartbeatConfig, f: FailoverConfig, node_name: str) -> None:
    """Raises ConfigError naming the first bad [heartbeat] or [failover] key."""
    if h.interval_seconds <= 0:
        raise ConfigError("heartbeat.interval_seconds", f"must be positive, got "
                                                        f"{h.interval_seconds}")
    if h.suspect_after_seconds <= h.interval_seconds:
        raise ConfigError(
            "heartbeat.suspect_after_seconds", "must exceed heartbeat.interval_seconds"
        )
    if h.dead_after_seconds <= h.suspect_after_seconds:
        raise ConfigError(
            "heartbeat.dead_after_seconds", "must exceed heartbeat.suspect_after_seconds"
        )
    if h.alive_after_heartbeats < 1:
        raise ConfigError("heartbeat.alive_after_heartbeats", "must be at least 1")
    if not h.secret_env:
        raise ConfigError("heartbeat.secret_env", "must name an environment variable")
    names: dict[str, int] = {}
    for i, peer in enumerate(h.peers):
        key = f"heartbeat.peers[{i}]"
        try:
            name, host, port = parse_peer(peer)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        if name == node_name:
            raise ConfigError(key, f"{name} is this node's own router.node_name")
        if name in names:
            raise ConfigError(key, f"{name} is already heartbeat.peers[{names[name]}]")
        names[name] = i
        local = ("127.0.0.1", "localhost", "0.0.0.0", "::1")
        if port == h.port and (host == h.host or (host in local and h.host in local)):
            raise ConfigError(key, f"{host}:{port} is this node's own heartbeat address")
    modes = {m.value: m for m in FailoverMode}
    if f.mode not in modes:
        raise ConfigError("failover.mode", f"must be one of {', '.join(modes)}, got {f.mode!r}")
    if modes[f.mode] is FailoverMode.MANAGED and not h.enabled:
        why = ("'managed' needs heartbeat.peers and a heartbeat.port: a majority of the "
               "router nodes decides a promotion")
        raise ConfigError("failover.mode", why)
    if f.down_after_seconds <= 0:
        raise ConfigError("failover.down_after_seconds", f"must be positive, got "
                                                         f"{f.down_after_seconds}")
    if f.write_buffer_seconds < 0:
        raise ConfigError("failover.write_buffer_seconds", "must not be negative")
