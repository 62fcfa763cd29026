"""`georoute user move`'s own refusals, with no cluster: a malformed id is refused before
anything is sent, and a router that cannot be reached is named in one line. The move itself:
tests/integration/test_user_move.py."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest

from router.config import load_config
from router.errors import RouterCallError
from router.tools.cli import main
from router.tools.usermove import admin_call

TOML = str(Path(__file__).resolve().parents[2] / "router.toml")


def test_a_malformed_user_id_is_refused_before_anything_is_sent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--config", TOML, "user", "move", "not-a-uuid", "asia"]) == 2
    assert "'not-a-uuid' is not a user id" in capsys.readouterr().err


async def test_a_router_that_cannot_be_reached_is_named() -> None:
    with socket.socket() as s:  # a port nothing listens on once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = load_config(TOML)
    config = replace(config, router=replace(config.router, listen_socket_dir="",
                                            listen_port=port))
    with pytest.raises(RouterCallError, match=f"cannot reach the router at 127.0.0.1:{port}"):
        await admin_call(config, "move_user", {"user_id": "x", "region": "asia"})
