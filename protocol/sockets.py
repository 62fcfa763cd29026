"""TCP keepalives for every connection georoute makes or accepts: client to router, router to
client, router to PostgreSQL.

A peer that vanishes without a word (a partition, a power cut, a VM gone) is noticed within
about half a minute instead of TCP's own quarter of an hour: an idle connection is probed
after 10 s, every 5 s, three times; data left unacknowledged for 30 s ends the connection
(TCP_USER_TIMEOUT). The requests on it then fail with a typed error (retryable for reads),
and a client's transaction pinned to it is rolled back. Unix sockets need none of this."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["KEEPALIVE_IDLE_S", "KEEPALIVE_INTERVAL_S", "KEEPALIVE_PROBES", "USER_TIMEOUT_MS",
           "keep_alive"]  # fmt: skip

KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3
USER_TIMEOUT_MS = 30_000


def keep_alive(transport: Any) -> bool:
    """Turn keepalives on for `transport`'s socket if it is TCP (also under TLS). True when
    they were set."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
                          ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                          ("TCP_KEEPCNT", KEEPALIVE_PROBES),
                          ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS)):  # fmt: skip
        if hasattr(socket, option):  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    return True
