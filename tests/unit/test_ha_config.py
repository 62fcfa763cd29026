"""[heartbeat] and [failover]: each mistake is a ConfigError naming the key; the heartbeat
secret is required (and long enough) once peers are configured."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from router.config import FailoverMode, parse_config
from router.errors import ConfigError
from router.ha.heartbeat import HeartbeatService, heartbeat_key
from router.ha.topology import Topology
from router.tools.config_write import config_to_toml

REPO = Path(__file__).resolve().parents[2]
RAW: dict[str, Any] = tomllib.loads((REPO / "router.toml").read_text())
PEERS = ["router-2@127.0.0.1:6701", "router-3@10.0.0.3:6700"]


def raw_with(heartbeat: dict[str, Any] | None = None,
             failover: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["heartbeat"].update(heartbeat or {})
    raw["failover"].update(failover or {})
    return raw


def rejects(raw: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert words in str(info.value)


def test_peers_by_name_and_address_round_trip() -> None:
    config = parse_config(raw_with({"peers": PEERS}))
    assert config.heartbeat.enabled
    assert config.heartbeat.peer_addresses() == {"router-2": ("127.0.0.1", 6701),
                                                 "router-3": ("10.0.0.3", 6700)}
    again = parse_config(tomllib.loads(config_to_toml(config)))
    assert (again.heartbeat, again.failover) == (config.heartbeat, config.failover)
    assert not parse_config(raw_with({"peers": PEERS, "port": 0})).heartbeat.enabled
    assert not parse_config(raw_with()).heartbeat.enabled  # no peers: a single node


@pytest.mark.parametrize(
    ("peer", "words"),
    [
        ("127.0.0.1:6701", "name@host:port"),  # the old host:port form names no node
        ("@127.0.0.1:6701", "name@host:port"),
        ("router-2@127.0.0.1", "name@host:port"),
        ("router-2@127.0.0.1:port", "name@host:port"),
        ("router-2@127.0.0.1:70000", "out of range"),
        ("r" * 65 + "@127.0.0.1:6701", "longer than 64"),
        ("router-1@127.0.0.1:6701", "own router.node_name"),
        ("router-2@localhost:6700", "own heartbeat address"),
    ],
)
def test_bad_peers(peer: str, words: str) -> None:
    rejects(raw_with({"peers": [PEERS[1], peer]}), "heartbeat.peers[1]", words)


def test_duplicate_peer_names_and_timing() -> None:
    rejects(raw_with({"peers": [*PEERS, "router-2@127.0.0.1:6702"]}), "heartbeat.peers[2]",
            "already heartbeat.peers[0]")
    rejects(raw_with({"dead_after_seconds": 2.0}), "heartbeat.dead_after_seconds",
            "must exceed heartbeat.suspect_after_seconds")
    rejects(raw_with({"alive_after_heartbeats": 0}), "heartbeat.alive_after_heartbeats",
            "at least 1")
    rejects(raw_with({"secret_env": ""}), "heartbeat.secret_env", "environment variable")


def test_failover_section() -> None:
    config = parse_config(raw_with())
    assert FailoverMode(config.failover.mode) is FailoverMode.OFF
    rejects(raw_with(failover={"mode": "automatic"}), "failover.mode", "must be one of")
    # managed needs peers: a majority of router nodes decides a promotion
    rejects(raw_with({"peers": []}, failover={"mode": "managed"}), "failover.mode",
            "needs heartbeat.peers")
    managed = parse_config(raw_with({"peers": ["b@127.0.0.1:6701", "c@127.0.0.1:6702"]},
                                    failover={"mode": "managed"}))
    assert FailoverMode(managed.failover.mode) is FailoverMode.MANAGED
    external = parse_config(raw_with(failover={"mode": "external"}))
    assert FailoverMode(external.failover.mode) is FailoverMode.EXTERNAL
    rejects(raw_with(failover={"down_after_seconds": 0}), "failover.down_after_seconds",
            "positive")
    rejects(raw_with(failover={"write_buffer_seconds": -1}), "failover.write_buffer_seconds",
            "negative")
    rejects(raw_with(failover={"synchronous": True}), "failover.synchronous", "unknown key")


def test_the_heartbeat_secret_is_required_and_long_enough(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = parse_config(raw_with({"peers": PEERS, "secret_env": "HB_TEST_SECRET"}))
    monkeypatch.delenv("HB_TEST_SECRET", raising=False)
    with pytest.raises(ConfigError, match="HB_TEST_SECRET is not set"):
        HeartbeatService(config, lambda: Topology({}))
    monkeypatch.setenv("HB_TEST_SECRET", "short")
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        heartbeat_key(config)
    monkeypatch.setenv("HB_TEST_SECRET", "x" * 16)
    service = HeartbeatService(config, lambda: Topology({}))
    assert set(service.membership.peers) == {"router-2", "router-3"}
    assert service.membership.majority == 2
