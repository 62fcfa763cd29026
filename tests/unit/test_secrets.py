"""Secrets at start-up: the router and the API refuse to start with no auth token or JWT
secret (or a blank one), save the demo, which makes up its own; files holding private keys
that others may read are refused (libpq's rule), and a `.env` others may read is warned about.
The processes are the real `georoute router` and `georoute api` commands, which stop before
they listen or connect anywhere."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trustme

from api.settings import SettingsError, load_dotenv_file, router_token
from router.config import load_config, parse_config
from router.errors import ConfigError
from router.node import RouterNode
from tests.support.reliability import record

REPO = Path(__file__).resolve().parents[2]
RAW: dict[str, Any] = tomllib.loads((REPO / "router.toml").read_text())
SECRET_VARS = ("GEOROUTE_TOKEN", "GEOROUTE_JWT_SECRET", "GEOROUTE_HEARTBEAT_SECRET")


def _georoute(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in SECRET_VARS}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "router.tools.cli", "--config", str(REPO / "router.toml"), *args],
        env=environment, cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("token", [None, "", "   "])
def test_the_router_node_refuses_no_token(monkeypatch: pytest.MonkeyPatch,
                                          token: str | None) -> None:
    if token is None:
        monkeypatch.delenv("GEOROUTE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("GEOROUTE_TOKEN", token)
    with pytest.raises(ConfigError) as info:
        RouterNode(load_config(REPO / "router.toml"))
    assert info.value.key == "router.auth_token_env"
    assert ("is not set" if token is None else "is empty") in info.value.message


def test_the_router_process_will_not_start_without_a_token(tmp_path: Path) -> None:
    for env in ({}, {"GEOROUTE_TOKEN": ""}):
        done = _georoute("router", env=env, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert "router.auth_token_env" in done.stderr and "GEOROUTE_TOKEN" in done.stderr
        assert "ready on" not in done.stdout


def test_the_api_process_will_not_start_without_its_secrets(tmp_path: Path) -> None:
    """No JWT secret (or a short one), or no token for the router: exit 2 with the variable
    named, before any connection. `--demo` makes up the JWT secret, never the token (the
    demo sets that one for the API it starts)."""
    secret = "s" * 32
    cases = [
        ({"GEOROUTE_TOKEN": "t"}, (), "GEOROUTE_JWT_SECRET"),
        ({"GEOROUTE_TOKEN": "t", "GEOROUTE_JWT_SECRET": ""}, (), "GEOROUTE_JWT_SECRET"),
        ({"GEOROUTE_TOKEN": "t", "GEOROUTE_JWT_SECRET": "short"}, (), "at least 32 bytes"),
        ({"GEOROUTE_JWT_SECRET": secret}, (), "GEOROUTE_TOKEN"),
        ({"GEOROUTE_JWT_SECRET": secret, "GEOROUTE_TOKEN": " "}, (), "GEOROUTE_TOKEN"),
        ({}, ("--demo",), "GEOROUTE_TOKEN"),
    ]
    for env, extra, named in cases:
        done = _georoute("api", "--port", "1", *extra, env=env, cwd=tmp_path)
        assert done.returncode == 2, (env, done.stdout, done.stderr)
        assert named in done.stderr, (env, done.stderr)
        assert "cannot reach the router" not in done.stderr  # refused before connecting
    record("missing or blank secrets at start-up",
           "georoute router without a token or with an empty one; georoute api without a JWT "
           "secret, with an empty or short one, without the router's token (--demo too)",
           None, refused_starts=2 + len(cases), exit_code=2)


def test_router_token_for_the_api() -> None:
    config = load_config(REPO / "router.toml")
    assert router_token(config, {"GEOROUTE_TOKEN": "abc"}) == "abc"
    for env in ({}, {"GEOROUTE_TOKEN": ""}, {"GEOROUTE_TOKEN": "\t"}):
        with pytest.raises(SettingsError, match="GEOROUTE_TOKEN"):
            router_token(config, env)


def _key_pair(tmp_path: Path) -> tuple[Path, Path]:
    cert = trustme.CA().issue_cert("router-1")
    cert_file, key_file = tmp_path / "c.pem", tmp_path / "c.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


def _with_router_tls(cert: Path, key: Path) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["router"]["tls_cert_file"], raw["router"]["tls_key_file"] = str(cert), str(key)
    return raw


def _with_client_cert(cert: Path, key: Path) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["database"].update(sslmode="verify-full", sslcert=str(cert), sslkey=str(key))
    return raw


@pytest.mark.parametrize(("build", "key_name"), [
    (_with_router_tls, "router.tls_key_file"),
    (_with_client_cert, "database.sslkey"),
])
def test_a_private_key_others_may_read_is_refused(tmp_path: Path, build: Any,
                                                   key_name: str) -> None:
    cert, key = _key_pair(tmp_path)
    for mode in (0o644, 0o640, 0o604, 0o660, 0o602):
        key.chmod(mode)
        with pytest.raises(ConfigError) as info:
            parse_config(build(cert, key))
        assert info.value.key == key_name
        assert f"mode {mode:04o}" in info.value.message and "0600 or less" in info.value.message
    for mode in (0o600, 0o400):
        key.chmod(mode)
        parse_config(build(cert, key))  # accepted
    cert.chmod(0o644)  # a certificate is public: only the key is checked
    parse_config(build(cert, key))
    record(f"a private key others may read ({key_name})",
           "the key file at modes 0644, 0640, 0604, 0660, 0602 (refused) and 0600, 0400",
           None, refused_modes=5, accepted_modes=2)


def test_a_key_root_owns_may_be_read_by_its_group(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq's exception: a key root owns, read by another user through a group (0640)."""
    cert, key = _key_pair(tmp_path)
    if key.stat().st_uid != 0:
        pytest.skip("needs a file root owns (the suite runs as root on CI)")
    monkeypatch.setattr(os, "geteuid", lambda: 4321)  # as if the router ran as another user
    key.chmod(0o640)
    parse_config(_with_router_tls(cert, key))
    for mode in (0o644, 0o660, 0o650):
        key.chmod(mode)
        with pytest.raises(ConfigError, match="0640 or less"):
            parse_config(_with_router_tls(cert, key))


def test_a_dotenv_others_may_read_is_warned_about(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("GEOROUTE_TEST_DOTENV_VALUE=1\n")
    monkeypatch.delenv("GEOROUTE_TEST_DOTENV_VALUE", raising=False)
    dotenv.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="georoute.api"):
        assert load_dotenv_file(dotenv)
    assert not caplog.records
    dotenv.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="georoute.api"):
        assert load_dotenv_file(dotenv)
    assert [r.getMessage() for r in caplog.records] == [
        f"{dotenv} may hold secrets and others may read it (mode 0644): chmod 600 it"]
    assert os.environ["GEOROUTE_TEST_DOTENV_VALUE"] == "1"  # still read
    monkeypatch.delenv("GEOROUTE_TEST_DOTENV_VALUE")


def test_env_example_lists_every_variable_the_code_reads() -> None:
    """.env.example says it lists every environment variable georoute reads: each name the
    product code spells (router, api, client, protocol) and each `*_env` default of
    router.toml is there, set or commented out."""
    import ast
    import re

    repo = Path(__file__).resolve().parents[2]
    named: set[str] = set()
    for package in ("router", "api", "client", "protocol"):
        for path in (repo / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                        and re.fullmatch(r"GEOROUTE_[A-Z0-9_]+|PG_BIN", node.value)):
                    named.add(node.value)

    def env_keys(table: Any) -> set[str]:
        found = set()
        for key, value in table.items():
            if isinstance(value, dict):
                found |= env_keys(value)
            elif key.endswith("_env") and isinstance(value, str):
                found.add(value)
        return found

    named |= env_keys(tomllib.loads((repo / "router.toml").read_text()))
    assert {"GEOROUTE_TOKEN", "GEOROUTE_JWT_SECRET", "PG_BIN"} <= named  # the scan works
    listed = set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", (repo / ".env.example").read_text(),
                            re.MULTILINE))
    assert named <= listed, f"missing from .env.example: {sorted(named - listed)}"
