"""Configs derived from a loaded one, and written back: a copy moved to other ports (tests,
benchmarks), and the TOML text of a config (for a child process's --config)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from router.config import SECTIONS, Config, NodeAddress

__all__ = ["config_to_toml", "with_port_offset"]


def with_port_offset(config: Config, offset: int, state_dir: str) -> Config:
    """A copy of `config` with every local port moved by `offset` and its own state dir.

    The test suite uses this so its cluster never collides with a running demo.
    """

    def node(n: NodeAddress) -> NodeAddress:
        return replace(n, port=n.port + offset)

    shards = {
        name: replace(s, primary=node(s.primary), replicas=tuple(node(r) for r in s.replicas))
        for name, s in config.shards.items()
    }
    doc_port = config.document_store_port()
    uri = config.document_store.uri
    if doc_port is not None:
        uri = uri.replace(f":{doc_port}", f":{doc_port + offset}", 1)

    def bump(port: int) -> int:
        return port + offset if port else 0

    return replace(
        config,
        router=replace(config.router, listen_port=bump(config.router.listen_port)),
        metrics=replace(config.metrics, port=bump(config.metrics.port)),
        heartbeat=replace(config.heartbeat, port=bump(config.heartbeat.port)),
        api=replace(config.api, port=bump(config.api.port)),
        cluster=replace(config.cluster, state_dir=state_dir),
        document_store=replace(config.document_store, uri=uri),
        shards=shards,
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, NodeAddress):
        return (
            f"{{ host = {_toml_value(value.host)}, port = {value.port}, "
            f"database = {_toml_value(value.database)} }}"
        )
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def config_to_toml(config: Config) -> str:
    """router.toml text that loads back into an equal Config (comments are not kept)."""
    lines: list[str] = []
    for name in SECTIONS:
        section = getattr(config, name)
        lines.append(f"[{name}]")
        lines.extend(f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in fields(section))
        lines.append("")
    for shard in config.shards.values():
        lines += [
            f"[shards.{shard.name}]",
            f"number = {shard.number}",
            f"primary = {_toml_value(shard.primary)}",
            f"replicas = {_toml_value(shard.replicas)}",
            f"synchronous = {_toml_value(shard.synchronous)}",
            "",
        ]
    for table in config.tables.values():
        lines.append(f"[tables.{table.name}]")
        if table.region_column is not None:
            lines.append(f"region_column = {_toml_value(table.region_column)}")
        lines += [f"id_columns = {_toml_value(table.id_columns)}", ""]
    return "\n".join(lines)
