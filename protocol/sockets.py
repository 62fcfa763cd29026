"""TCP keepalives for every connection georoute makes or accepts: client to router, router to
client, router to PostgreSQL.

A peer that vanishes without a word (a partition, a power cut, a VM gone) while the
connection is idle is noticed within about 25 s instead of after TCP's two hours: it is
probed after 10 s, every 5 s, three times. Unix sockets need none of this.

`user_timeout_ms` (TCP_USER_TIMEOUT) also ends a connection whose sent data stays
unacknowledged that long: a peer that vanished while requests were in flight, which
keepalives never probe. Linux applies it to a peer that has stopped reading (a zero window)
as well, even one that answers every probe: so it must exceed the longest a healthy peer may
go without reading. The router sets it on its connections to nodes only
(`database.tcp_user_timeout_seconds`, above the statement timeout); a client may stop
reading for as long as it likes."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["KEEPALIVE_IDLE_S", "KEEPALIVE_INTERVAL_S", "KEEPALIVE_PROBES", "keep_alive"]

KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 10, 5, 3


def keep_alive(transport: Any, user_timeout_ms: int = 0) -> bool:
    """Turn keepalives on for `transport`'s socket if it is TCP (also under TLS). True when
    they were set; False for other sockets, and for one already closed (it is no loss: the
    connection is over)."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return False
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        options = [("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                   ("TCP_KEEPCNT", KEEPALIVE_PROBES)]
        if user_timeout_ms > 0:
            options.append(("TCP_USER_TIMEOUT", user_timeout_ms))
        for option, value in options:
            if hasattr(socket, option):  # Linux has them all; other systems some
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except (OSError, ValueError):  # closed under us (uvloop's wrapper raises ValueError)
        return False
    return True
