"""router.toml validation: each kind of mistake is a ConfigError naming the key, and the CLI
turns it into one line on stderr and exit status 2 without starting anything."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from router.config import NodeAddress, load_config, parse_config
from router.errors import ConfigError
from router.tools.config_write import with_port_offset

REPO = Path(__file__).resolve().parents[2]
RAW: dict[str, Any] = tomllib.loads((REPO / "router.toml").read_text())


def _raw() -> dict[str, Any]:
    return copy.deepcopy(RAW)


def _rejects(raw: dict[str, Any], key: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == key
    assert key in str(info.value)
    return info.value


def test_the_shipped_config_is_valid() -> None:
    config = load_config(REPO / "router.toml")
    assert [name for _, name, _ in config.all_nodes()][:2] == [
        "north_america-1",
        "north_america-2",
    ]
    assert config.document_store_port() == 7117


def test_port_offset_moves_every_local_port() -> None:
    config = with_port_offset(load_config(REPO / "router.toml"), 10000, "/tmp/x")
    assert config.shards["north_america"].primary.port == 16501
    assert config.document_store_port() == 17117
    assert config.router.listen_port == 16600
    assert config.cluster.state_dir == "/tmp/x"


def test_unknown_key() -> None:
    raw = _raw()
    raw["router"]["lisen_port"] = 1
    _rejects(raw, "router.lisen_port")


def test_unknown_section() -> None:
    raw = _raw()
    raw["routr"] = {}
    _rejects(raw, "routr")


def test_no_shards() -> None:
    raw = _raw()
    del raw["shards"]
    _rejects(raw, "shards")
    raw["shards"] = {}
    _rejects(raw, "shards")


@pytest.mark.parametrize("name", ["Europe", "south-america", "1st", "eu:west", ""])
def test_a_shard_name_is_a_plain_lower_case_name(name: str) -> None:
    raw = _raw()
    raw["shards"][name] = raw["shards"].pop("asia")
    _rejects(raw, f"shards.{name}")


def test_regions_are_the_shards_configured() -> None:
    """The seed's three are what router.toml ships; a fourth, or two, load as well."""
    assert list(load_config(REPO / "router.toml").shards) == ["north_america", "europe", "asia"]
    raw = _raw()
    raw["shards"]["africa"] = {"number": 4, "primary": {"port": 6507},
                               "replicas": [{"port": 6508}]}
    config = parse_config(raw)
    assert list(config.shards) == ["north_america", "europe", "asia", "africa"]
    assert config.shard_by_number(4) is config.shards["africa"]
    assert ("africa", "africa-1", NodeAddress("127.0.0.1", 6507)) in config.all_nodes()
    del raw["shards"]["north_america"], raw["shards"]["asia"]
    assert list(parse_config(raw).shards) == ["europe", "africa"]


def test_duplicate_port() -> None:
    raw = _raw()
    raw["shards"]["europe"]["primary"]["port"] = raw["shards"]["north_america"]["primary"]["port"]
    error = _rejects(raw, "shards.europe.primary.port")
    assert "duplicate port" in error.message


def test_wrong_type() -> None:
    raw = _raw()
    raw["database"]["pool_max_size"] = "16"
    _rejects(raw, "database.pool_max_size")


@pytest.mark.parametrize("number", [256, -1])
def test_shard_number_out_of_range(number: int) -> None:
    raw = _raw()
    raw["shards"]["asia"]["number"] = number
    _rejects(raw, "shards.asia.number")


def test_shard_number_used_twice() -> None:
    raw = _raw()
    raw["shards"]["asia"]["number"] = raw["shards"]["europe"]["number"]
    _rejects(raw, "shards.asia.number")


def test_pool_min_above_pool_max() -> None:
    raw = _raw()
    raw["database"]["pool_min_size"] = 20
    raw["database"]["pool_max_size"] = 10
    _rejects(raw, "database.pool_min_size")


def test_tls_settings(tmp_path: Path) -> None:
    raw = _raw()
    raw["database"]["sslmode"] = "verify_full"  # libpq spells it verify-full
    assert "verify-full" in str(_rejects(raw, "database.sslmode"))
    raw = _raw()
    raw["database"]["sslmode"] = "verify-full"
    raw["database"]["sslrootcert"] = "/no/such/ca.pem"
    _rejects(raw, "database.sslrootcert")
    raw["database"]["sslrootcert"] = str(REPO / "router.toml")  # not certificates
    assert "cannot load" in str(_rejects(raw, "database.sslrootcert"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    raw["database"]["sslrootcert"] = str(tmp_path / "ca.pem")
    assert parse_config(raw).database.sslmode == "verify-full"


def test_router_tls_needs_both_files_and_they_must_exist() -> None:
    raw = _raw()
    raw["router"]["tls_cert_file"] = str(REPO / "router.toml")
    _rejects(raw, "router.tls_key_file")
    raw["router"]["tls_key_file"] = "/no/such/key.pem"
    _rejects(raw, "router.tls_key_file")
    raw = _raw()
    raw["router"]["tls_key_file"] = str(REPO / "router.toml")
    _rejects(raw, "router.tls_cert_file")


def test_a_client_certificate_needs_its_key_tls_and_files_that_load(tmp_path: Path) -> None:
    ca = trustme.CA()
    mine, other = ca.issue_cert("router-1"), ca.issue_cert("router-2")
    cert, key, other_key = tmp_path / "c.pem", tmp_path / "c.key", tmp_path / "o.key"
    mine.cert_chain_pems[0].write_to_path(str(cert))
    mine.private_key_pem.write_to_path(str(key))
    other.private_key_pem.write_to_path(str(other_key))
    not_pem = tmp_path / "not-a-key.pem"
    not_pem.write_text("[router]\n")
    for private in (key, other_key, not_pem):
        private.chmod(0o600)  # a key others may read is refused first (tests/unit/test_secrets.py)
    raw = _raw()
    raw["database"]["sslmode"] = "verify-full"
    raw["database"]["sslcert"] = str(cert)
    _rejects(raw, "database.sslkey")
    raw["database"]["sslkey"] = "/no/such/client.key"
    _rejects(raw, "database.sslkey")
    raw["database"]["sslkey"] = str(other_key)  # not this certificate's key: refused at load
    assert "cannot load" in str(_rejects(raw, "database.sslcert"))
    raw["database"]["sslkey"] = str(not_pem)  # not PEM
    _rejects(raw, "database.sslcert")
    raw["database"]["sslkey"] = str(key)
    assert parse_config(raw).database.sslcert == str(cert)
    for mode in ("prefer", "disable"):  # prefer may fall back to clear text: no certificate
        raw["database"]["sslmode"] = mode
        assert mode in str(_rejects(raw, "database.sslcert"))


def test_the_tcp_user_timeout_must_outlast_a_statement() -> None:
    """A node reads nothing while it runs a statement; the timeout must not cut it off."""
    raw = _raw()
    raw["router"]["statement_timeout_seconds"] = 30
    raw["database"]["tcp_user_timeout_seconds"] = 30
    _rejects(raw, "database.tcp_user_timeout_seconds")
    raw["router"]["statement_timeout_seconds"] = 0  # statements without end
    raw["database"]["tcp_user_timeout_seconds"] = 60
    _rejects(raw, "database.tcp_user_timeout_seconds")
    raw["database"]["tcp_user_timeout_seconds"] = 0  # off
    assert parse_config(raw).database.tcp_user_timeout_seconds == 0
    raw["router"]["statement_timeout_seconds"] = 30
    raw["database"]["tcp_user_timeout_seconds"] = 31
    assert parse_config(raw).database.tcp_user_timeout_seconds == 31


def test_mutual_tls_on_the_listener_needs_its_tls(tmp_path: Path) -> None:
    readable = str(REPO / "router.toml")
    private = tmp_path / "key.pem"  # (only its existence and mode are checked here)
    private.write_text("")
    private.chmod(0o600)
    raw = _raw()
    raw["router"]["tls_client_ca_file"] = readable
    _rejects(raw, "router.tls_client_ca_file")
    raw["router"]["tls_cert_file"], raw["router"]["tls_key_file"] = readable, str(private)
    assert parse_config(raw).router.tls_client_ca_file == readable
    raw["router"]["tls_client_ca_file"] = "/no/such/ca.pem"
    _rejects(raw, "router.tls_client_ca_file")


def test_reply_batch_must_be_positive() -> None:
    raw = _raw()
    raw["router"]["reply_batch"] = 0
    _rejects(raw, "router.reply_batch")


def test_max_frame_bytes_has_room_for_every_status_and_error_reply() -> None:
    raw = _raw()
    raw["router"]["max_frame_bytes"] = 100
    _rejects(raw, "router.max_frame_bytes")
    raw["router"]["max_frame_bytes"] = 4096
    assert parse_config(raw).router.max_frame_bytes == 4096


def _georoute(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.tools.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    text = (REPO / "router.toml").read_text().replace("pool_max_size = 16", 'pool_max_size = "x"')
    bad.write_text(text.replace('state_dir = ".georoute"', 'state_dir = "state"'))
    proc = _georoute("--config", str(bad), "cluster", "up")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("georoute: invalid config: database.pool_max_size: ")
    assert not (tmp_path / "state").exists()


def test_cli_rejects_a_missing_pg_bin_before_creating_anything(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    text = (REPO / "router.toml").read_text().replace('pg_bin = ""', 'pg_bin = "no/such/dir"')
    config.write_text(text.replace('state_dir = ".georoute"', 'state_dir = "state"'))
    proc = _georoute("--config", str(config), "cluster", "up")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("georoute: invalid config: cluster.pg_bin: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "state").exists()


def test_socket_dir_must_be_absolute() -> None:
    raw = copy.deepcopy(RAW)
    raw["database"]["socket_dir"] = "relative/sockets"
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.key == "database.socket_dir"


def test_socket_dir_applies_only_to_local_nodes() -> None:
    config = load_config(REPO / "router.toml")
    db = replace(config.database, socket_dir="/tmp")
    assert db.host_for(NodeAddress("127.0.0.1", 6501)) == "/tmp"
    assert db.host_for(NodeAddress("db.example.internal", 6501)) == "db.example.internal"
    assert replace(db, socket_dir="").host_for(NodeAddress("127.0.0.1", 1)) == "127.0.0.1"

