"""One validated, immutable configuration object built from router.toml.

`load_config(path)` is the only way in: it reads TOML, rejects unknown keys, wrong types,
missing shards and duplicate ports with a ConfigError naming the key, and returns a frozen
`Config`. Nothing else in the project reads router.toml or keeps a global config.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from protocol.tlsmode import DATABASE_MODES
from router.config_backup import BackupConfig, validate_backup
from router.config_ha import (
    FailoverConfig,
    FailoverMode,
    HeartbeatConfig,
    parse_peer,
    validate_ha,
)
from router.errors import ConfigError

__all__ = [
    "MIN_FRAME_BYTES",
    "SECTIONS",
    "SHARD_NAME",
    "ApiConfig",
    "BackupConfig",
    "ClusterConfig",
    "Config",
    "DatabaseConfig",
    "DocumentStoreConfig",
    "FailoverConfig",
    "FailoverMode",
    "HeartbeatConfig",
    "MetricsConfig",
    "NodeAddress",
    "RouterConfig",
    "ShardConfig",
    "TableConfig",
    "load_config",
    "parse_config",
    "parse_function_spec",
    "parse_peer",
]

# A shard's name is its region's: the value of region columns (`home_region = 'europe'`), of
# georoute_shard.name on its nodes, and part of node names, metric labels and read-your-writes
# tokens. router.toml ships north_america, europe and asia; any set of names of this shape
# works (the seed data knows those three best).
SHARD_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class NodeAddress:
    host: str
    port: int
    database: str = "georoute"

    @property
    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ShardConfig:
    name: str
    number: int
    primary: NodeAddress
    replicas: tuple[NodeAddress, ...]
    # Synchronous streaming replication (synchronous_standby_names) in the local cluster, so
    # a write is acknowledged only once a standby has it (README, "High availability").
    synchronous: bool = False


@dataclass(frozen=True, slots=True)
class TableConfig:
    name: str
    region_column: str | None = None
    id_columns: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterConfig:
    node_name: str = "router-1"
    listen_host: str = "127.0.0.1"
    listen_port: int = 6600
    listen_socket_dir: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""  # set: clients must present a certificate this CA signed
    auth_token_env: str = "GEOROUTE_TOKEN"
    max_frame_bytes: int = 16 * 1024 * 1024
    max_sql_bytes: int = 1024 * 1024
    reply_batch: int = 16
    max_client_connections: int = 10000
    max_in_flight_per_connection: int = 1024
    handshake_timeout_seconds: float = 10.0
    log_min_duration_ms: float = 1000.0
    drain_timeout_seconds: float = 10.0
    parse_cache_size: int = 4096
    read_only_functions: tuple[str, ...] = ()
    read_only_builtins: bool = True
    sharded_functions: tuple[str, ...] = ()
    max_replica_lag_bytes: int = 1024 * 1024
    lag_poll_interval_seconds: float = 0.05
    read_your_writes_wait_ms: int = 20
    pool_acquire_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 30.0
    transaction_idle_timeout_seconds: float = 60.0
    idempotency_retention_seconds: float = 86400.0
    max_scatter_rows: int = 100_000
    twophase_grace_seconds: float = 10.0
    twophase_recovery_interval_seconds: float = 5.0
    shard_check_interval_seconds: float = 60.0


def router_socket_path(router: RouterConfig) -> str | None:
    """The router's Unix socket (`<listen_socket_dir>/.s.georoute.<listen_port>`, named like
    PostgreSQL's), or None when it listens on TCP only."""
    if not router.listen_socket_dir:
        return None
    return f"{router.listen_socket_dir.rstrip('/')}/.s.georoute.{router.listen_port}"


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    host: str = "127.0.0.1"
    port: int = 9600


# router.max_frame_bytes' floor: room for any Status or Error reply the router makes.
MIN_FRAME_BYTES = 4096

# database.sslmode, as libpq names them (the table in protocol/tlsmode.py).
SSL_MODES = DATABASE_MODES


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    user: str = "postgres"
    password_env: str = "GEOROUTE_DB_PASSWORD"
    pool_min_size: int = 2
    pool_max_size: int = 16
    statement_cache_size: int = 256
    connect_timeout_seconds: float = 3.0
    # TCP_USER_TIMEOUT on connections to nodes (protocol/sockets.py): 0 = off.
    tcp_user_timeout_seconds: float = 60.0
    socket_dir: str = ""
    pipeline_connections: int = 2
    pipeline_max_in_flight: int = 256
    pipeline_slow_ms: float = 20.0
    sslmode: str = "prefer"
    sslrootcert: str = ""
    sslcert: str = ""  # the router's client certificate for the nodes (and sslkey, its key)
    sslkey: str = ""

    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None

    def host_for(self, address: NodeAddress) -> str:
        """Where to connect to a node: its Unix socket directory when the node is on this
        machine and socket_dir is set (fewer system-call costs than TCP loopback)."""
        if self.socket_dir and address.host in ("127.0.0.1", "localhost", "::1"):
            return self.socket_dir
        return address.host


@dataclass(frozen=True, slots=True)
class DocumentStoreConfig:
    uri: str = "mongodb://127.0.0.1:7117/?retryWrites=false"
    database: str = "georoute"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    state_dir: str = ".georoute"
    server_user: str = "georoute"
    pg_bin: str = ""


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """[api]: the REST facade (api/); api/settings.py checks the values it reads."""

    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret_env: str = "GEOROUTE_JWT_SECRET"
    jwt_ttl_seconds: int = 900
    refresh_ttl_seconds: int = 1209600
    jwt_issuer: str = "georoute"
    jwt_audience: str = "georoute-api"
    rate_limit_per_minute: int = 600
    rate_limit_burst: int = 60
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1048576


@dataclass(frozen=True, slots=True)
class Config:
    router: RouterConfig
    metrics: MetricsConfig
    database: DatabaseConfig
    document_store: DocumentStoreConfig
    cluster: ClusterConfig
    heartbeat: HeartbeatConfig
    api: ApiConfig
    shards: Mapping[str, ShardConfig]
    tables: Mapping[str, TableConfig] = field(default_factory=dict)
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    backup: BackupConfig = field(default_factory=BackupConfig)
    source: str = "<memory>"

    def shard_by_number(self, number: int) -> ShardConfig | None:
        for shard in self.shards.values():
            if shard.number == number:
                return shard
        return None

    def all_nodes(self) -> list[tuple[str, str, NodeAddress]]:
        """(shard, node name, address) for every database node, each shard's `primary` entry
        first. A node is named by its shard and its place in router.toml: `europe-1` is the
        `primary` entry, `europe-2` the first of `replicas`, and so on. The name says nothing
        of the node's role, which is live state (a failover makes `europe-2` the primary)."""
        out: list[tuple[str, str, NodeAddress]] = []
        for shard in self.shards.values():
            for i, address in enumerate((shard.primary, *shard.replicas), start=1):
                out.append((shard.name, f"{shard.name}-{i}", address))
        return out

    def document_store_port(self) -> int | None:
        """The port in the document store URI when it points at this machine, else None."""
        rest = self.document_store.uri.split("://", 1)[-1].split("/", 1)[0]
        hostport = rest.rsplit("@", 1)[-1].split(",")[0]
        host, _, port = hostport.rpartition(":")
        if host in ("127.0.0.1", "localhost") and port.isdigit():
            return int(port)
        return None


# ---- loading -------------------------------------------------------------------------------

SECTIONS: dict[str, type] = {
    "router": RouterConfig,
    "metrics": MetricsConfig,
    "database": DatabaseConfig,
    "document_store": DocumentStoreConfig,
    "cluster": ClusterConfig,
    "heartbeat": HeartbeatConfig,
    "failover": FailoverConfig,
    "api": ApiConfig,
    "backup": BackupConfig,
}


def _type_name(tp: Any) -> str:
    return {int: "integer", float: "number", str: "string", bool: "boolean"}.get(tp, str(tp))


def _check_scalar(key: str, value: Any, expected: type) -> Any:
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got boolean {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(
            key, f"expected {_type_name(expected)}, got {type(value).__name__} {value!r}"
        )
    return value


def _check_str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, "expected a table")
    kwargs: dict[str, Any] = {}
    known = {f.name: f for f in fields(cls)}
    for key, value in raw.items():
        full = f"{name}.{key}"
        if key not in known:
            raise ConfigError(full, f"unknown key (known: {', '.join(sorted(known))})")
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            kwargs[key] = _check_str_list(full, value)
        else:
            kwargs[key] = _check_scalar(full, value, type(default))
    return cls(**kwargs)


def _port(key: str, value: Any, allow_zero: bool = False) -> int:
    value = _check_scalar(key, value, int)
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(key, f"port {value} is out of range")
    return int(value)


def _build_node(key: str, raw: Any) -> NodeAddress:
    if not isinstance(raw, dict):
        raise ConfigError(key, "expected a table like { host = ..., port = ..., database = ... }")
    for k in raw:
        if k not in ("host", "port", "database"):
            raise ConfigError(f"{key}.{k}", "unknown key (known: database, host, port)")
    if "port" not in raw:
        raise ConfigError(f"{key}.port", "missing")
    host = _check_scalar(f"{key}.host", raw.get("host", "127.0.0.1"), str)
    database = _check_scalar(f"{key}.database", raw.get("database", "georoute"), str)
    return NodeAddress(host=host, port=_port(f"{key}.port", raw["port"]), database=database)


def _build_shard(name: str, raw: Any) -> ShardConfig:
    key = f"shards.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(key, "expected a table")
    for k in raw:
        if k not in ("number", "primary", "replicas", "synchronous"):
            raise ConfigError(f"{key}.{k}", "unknown key (known: number, primary, replicas, "
                                            "synchronous)")
    for required in ("number", "primary", "replicas"):
        if required not in raw:
            raise ConfigError(f"{key}.{required}", "missing")
    number = _check_scalar(f"{key}.number", raw["number"], int)
    if not 0 <= number <= 255:
        raise ConfigError(f"{key}.number", f"{number} is outside 0..255")
    primary = _build_node(f"{key}.primary", raw["primary"])
    reps = raw["replicas"]
    if not isinstance(reps, list) or not reps:
        raise ConfigError(f"{key}.replicas", "expected a non-empty list of nodes")
    replicas = tuple(_build_node(f"{key}.replicas[{i}]", r) for i, r in enumerate(reps))
    synchronous = _check_scalar(f"{key}.synchronous", raw.get("synchronous", False), bool)
    return ShardConfig(name=name, number=number, primary=primary, replicas=replicas,
                       synchronous=synchronous)


def _build_table(name: str, raw: Any) -> TableConfig:
    key = f"tables.{name}"
    if not isinstance(raw, dict):
        raise ConfigError(key, "expected a table")
    for k in raw:
        if k not in ("region_column", "id_columns"):
            raise ConfigError(f"{key}.{k}", "unknown key (known: id_columns, region_column)")
    region = raw.get("region_column")
    if region is not None:
        region = _check_scalar(f"{key}.region_column", region, str)
    ids = _check_str_list(f"{key}.id_columns", raw.get("id_columns", []))
    if region is None and not ids:
        raise ConfigError(key, "needs region_column or id_columns")
    return TableConfig(name=name, region_column=region, id_columns=ids)


def parse_config(raw: Mapping[str, Any], source: str = "<memory>") -> Config:
    """Build and validate a Config from already-parsed TOML."""
    for key in raw:
        if key not in (*SECTIONS, "shards", "tables"):
            raise ConfigError(key, "unknown section")
    sections = {
        name: _build_section(name, cls, raw.get(name, {})) for name, cls in SECTIONS.items()
    }

    raw_shards = raw.get("shards")
    if not isinstance(raw_shards, dict) or not raw_shards:
        raise ConfigError("shards", "missing: configure at least one [shards.<region>]")
    for name in raw_shards:
        if not SHARD_NAME.fullmatch(name):
            why = "a shard (region) name is lower case letters, digits and _, from a letter"
            raise ConfigError(f"shards.{name}", why)
    shards = {name: _build_shard(name, shard) for name, shard in raw_shards.items()}

    raw_tables = raw.get("tables", {})
    if not isinstance(raw_tables, dict):
        raise ConfigError("tables", "expected a table")
    tables = {name: _build_table(name, t) for name, t in raw_tables.items()}

    config = Config(shards=shards, tables=tables, source=source, **sections)
    _validate(config)
    return config


_FUNCTION_SPEC = re.compile(r"^\s*([a-z_][a-z0-9_$.]*)\s*(?:\(([0-9,\s]*)\))?\s*$")


def parse_function_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """A `router.sharded_functions` entry: `name`, or `name(1, 2)` naming the (1-based)
    positional arguments that carry a shard (a georoute id or a region name)."""
    found = _FUNCTION_SPEC.match(spec)
    if found is None:
        raise ValueError(f"{spec!r} is not `name` or `name(1, 2)` (lower case, argument "
                         "positions from 1)")
    positions = tuple(int(p) for p in (found.group(2) or "").replace(",", " ").split())
    if any(p < 1 for p in positions):
        raise ValueError(f"{spec!r}: argument positions count from 1")
    return found.group(1), positions


def _validate(config: Config) -> None:
    """Each section's own checks, then those across sections; the first bad key raises."""
    _validate_shards(config.shards)
    _validate_router(config.router)
    _validate_database(config.database, config.router)
    _positive("api.jwt_ttl_seconds", config.api.jwt_ttl_seconds)
    _positive("api.rate_limit_per_minute", config.api.rate_limit_per_minute)
    validate_ha(config.heartbeat, config.failover, config.router.node_name)
    validate_backup(config.backup, list(config.shards))
    _validate_ports(config)


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _non_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(key, f"must not be negative, got {value}")


def _socket_dir(key: str, socket_dir: str) -> None:
    if socket_dir and not os.path.isabs(socket_dir):
        raise ConfigError(key, f"must be an absolute path, got {socket_dir!r}")
    if len(socket_dir) > 80:  # the socket file's full path must fit in 107 bytes
        raise ConfigError(key, "is too long for a Unix socket path")


def _existing_file(key: str, path: str) -> None:
    if path and not os.path.isfile(path):
        raise ConfigError(key, f"no such file: {path}")


def _private_key_file(key: str, path: str) -> None:
    """A private key that others may read is refused, by libpq's rule for `sslkey`: a key of
    our own user must grant nothing to group or other (0600 or less); one that root owns may
    also be read by its group (0640 or less, so a key can be shared through a group)."""
    if not path:
        return
    st = os.stat(path)
    root_owned = st.st_uid == 0 and st.st_uid != os.geteuid()
    loose = st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) & ~(stat.S_IRGRP if root_owned else 0)
    if loose:
        allowed = "0640 or less (root owns it)" if root_owned else "0600 or less"
        raise ConfigError(key, f"{path} holds a private key that others may read (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); it must be {allowed}")


def _validate_shards(shards: Mapping[str, ShardConfig]) -> None:
    numbers: dict[int, str] = {}
    for shard in shards.values():
        if shard.number in numbers:
            raise ConfigError(
                f"shards.{shard.name}.number",
                f"{shard.number} is already used by shard {numbers[shard.number]}",
            )
        numbers[shard.number] = shard.name


def _validate_router(r: RouterConfig) -> None:
    for key in ("max_frame_bytes", "max_sql_bytes", "reply_batch", "max_client_connections",
                "max_in_flight_per_connection", "handshake_timeout_seconds", "parse_cache_size",
                "drain_timeout_seconds", "lag_poll_interval_seconds",
                "pool_acquire_timeout_seconds", "idempotency_retention_seconds",
                "max_scatter_rows", "twophase_grace_seconds",
                "twophase_recovery_interval_seconds"):
        _positive(f"router.{key}", getattr(r, key))
    for key in ("max_replica_lag_bytes", "read_your_writes_wait_ms", "statement_timeout_seconds",
                "transaction_idle_timeout_seconds", "shard_check_interval_seconds"):
        _non_negative(f"router.{key}", getattr(r, key))
    if r.log_min_duration_ms < 0 and r.log_min_duration_ms != -1:
        raise ConfigError("router.log_min_duration_ms",
                          f"must be -1 (off) or at least 0, got {r.log_min_duration_ms}")
    for spec in r.sharded_functions:
        try:
            parse_function_spec(spec)
        except ValueError as exc:
            raise ConfigError("router.sharded_functions", str(exc)) from None
    if r.max_frame_bytes < MIN_FRAME_BYTES:
        # Every Status and Error reply must fit, or a client could be left with no answer
        # (a write's "applied, result undeliverable" error among them).
        why = f"must be at least {MIN_FRAME_BYTES}, got {r.max_frame_bytes}"
        raise ConfigError("router.max_frame_bytes", why)
    _socket_dir("router.listen_socket_dir", r.listen_socket_dir)
    if bool(r.tls_cert_file) != bool(r.tls_key_file):
        raise ConfigError("router.tls_key_file" if r.tls_cert_file else "router.tls_cert_file",
                          "TLS needs both a certificate and its key")
    if r.tls_client_ca_file and not r.tls_cert_file:
        why = "needs router.tls_cert_file and tls_key_file (the listener's TLS)"
        raise ConfigError("router.tls_client_ca_file", why)
    for key in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        _existing_file(f"router.{key}", getattr(r, key))
    _private_key_file("router.tls_key_file", r.tls_key_file)


def _validate_database(d: DatabaseConfig, r: RouterConfig) -> None:
    for key in ("pool_max_size", "connect_timeout_seconds", "pipeline_max_in_flight",
                "pipeline_slow_ms"):
        _positive(f"database.{key}", getattr(d, key))
    for key in ("pool_min_size", "statement_cache_size", "pipeline_connections",
                "tcp_user_timeout_seconds"):
        _non_negative(f"database.{key}", getattr(d, key))
    if d.pool_min_size > d.pool_max_size:
        raise ConfigError("database.pool_min_size", "is larger than database.pool_max_size")
    _socket_dir("database.socket_dir", d.socket_dir)
    if d.sslmode not in SSL_MODES:
        raise ConfigError("database.sslmode", f"must be one of {', '.join(SSL_MODES)}, "
                                              f"got {d.sslmode!r}")
    if bool(d.sslcert) != bool(d.sslkey):
        raise ConfigError("database.sslkey" if d.sslcert else "database.sslcert",
                          "a client certificate needs both sslcert and sslkey")
    if d.sslcert and d.sslmode in ("disable", "prefer"):
        why = f"a client certificate needs sslmode require or verify-*, not {d.sslmode}"
        raise ConfigError("database.sslcert", why)
    for key in ("sslrootcert", "sslcert", "sslkey"):
        _existing_file(f"database.{key}", getattr(d, key))
    _private_key_file("database.sslkey", d.sslkey)
    _check_tls_files(d)
    if d.tcp_user_timeout_seconds and (
        not r.statement_timeout_seconds or d.tcp_user_timeout_seconds <= r.statement_timeout_seconds
    ):
        # A node does not read while it runs a statement: a connection with requests queued
        # behind a long one would be cut while it is healthy.
        why = "must exceed router.statement_timeout_seconds (or be 0: off)"
        raise ConfigError("database.tcp_user_timeout_seconds", why)


def _validate_ports(config: Config) -> None:
    """No two listeners on this machine (router, metrics, heartbeat, api, database nodes, the
    document store) share a port."""
    ports: dict[tuple[str, int], str] = {}

    def claim(key: str, host: str, port: int, allow_zero: bool = False) -> None:
        port = _port(key, port, allow_zero)
        if port == 0:
            return
        # 127.0.0.1 and localhost and 0.0.0.0 all collide with one another on this machine.
        norm = "local" if host in ("127.0.0.1", "localhost", "0.0.0.0", "::1") else host
        if (norm, port) in ports:
            raise ConfigError(key, f"duplicate port {port} (also used by {ports[(norm, port)]})")
        ports[(norm, port)] = key

    claim("router.listen_port", config.router.listen_host, config.router.listen_port)
    claim("metrics.port", config.metrics.host, config.metrics.port, allow_zero=True)
    claim("heartbeat.port", config.heartbeat.host, config.heartbeat.port, allow_zero=True)
    claim("api.port", config.api.host, config.api.port)
    for shard in config.shards.values():
        claim(f"shards.{shard.name}.primary.port", shard.primary.host, shard.primary.port)
        for i, rep in enumerate(shard.replicas):
            claim(f"shards.{shard.name}.replicas[{i}].port", rep.host, rep.port)
    doc_port = config.document_store_port()
    if doc_port is not None:
        claim("document_store.uri", "127.0.0.1", doc_port)


def _check_tls_files(d: DatabaseConfig) -> None:
    """Load `database.sslrootcert` and `sslcert`/`sslkey` now, so files that are not
    certificates, or a key that is not the certificate's, stop start-up (or a reload) rather
    than every connection later. router/backend/tls.py builds the contexts it uses."""
    if not (d.sslcert or d.sslrootcert):
        return
    import ssl  # here, not above: router/core/ imports this module and must not load ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    key = "database.sslrootcert"
    try:
        if d.sslrootcert:
            ctx.load_verify_locations(cafile=d.sslrootcert)
        key = "database.sslcert"
        if d.sslcert:
            ctx.load_cert_chain(d.sslcert, d.sslkey or None, password=_no_password)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError(key, f"cannot load: {exc}") from exc


def _no_password() -> str:
    raise ValueError("the key is encrypted; give an unencrypted key file")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate router.toml. Raises ConfigError naming the key on any problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), f"cannot read config file: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), f"not valid TOML: {exc}") from exc
    return parse_config(raw, source=str(p.resolve()))
