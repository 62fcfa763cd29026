"""libpq's sslmode as a table: for each mode, whether TLS is started, whether a failed attempt
goes on in clear, and what of the server's certificate is checked. Pure data, no `ssl`: the
client library (client/tls.py, to a router node) and the router (router/backend/tls.py, to
PostgreSQL) each build their `ssl.SSLContext` from the same row, so the two cannot drift.

| mode        | TLS                   | certificate checked                   | client certificate |
|-------------|-----------------------|---------------------------------------|--------------------|
| disable     | never                 | -                                     | refused            |
| prefer      | if the server has it; | never (a failed check would only send | refused            |
|             | else in clear         | it back to clear text)                |                    |
| require     | always                | no; as verify-ca with a root cert     | allowed            |
| verify-ca   | always                | chains to the root cert (or system's) | allowed            |
| verify-full | always                | and names the host connected to       | allowed            |

Unix sockets never use TLS, in any mode (as in libpq): they do not leave the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLIENT_MODES", "DATABASE_MODES", "TLSPolicy", "tls_policy"]


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    mode: str
    encrypt: bool  # start TLS at all
    clear_fallback: bool  # the server has no TLS, or the handshake fails: go on in clear
    verify_chain: bool  # the certificate must chain to the root cert (or the system's CAs)
    verify_host: bool  # and name the host connected to
    client_cert: bool  # a client certificate may be presented


_TABLE: dict[str, TLSPolicy] = {
    p.mode: p
    for p in (
        TLSPolicy("disable", encrypt=False, clear_fallback=False, verify_chain=False,
                  verify_host=False, client_cert=False),
        TLSPolicy("prefer", encrypt=True, clear_fallback=True, verify_chain=False,
                  verify_host=False, client_cert=False),
        TLSPolicy("require", encrypt=True, clear_fallback=False, verify_chain=False,
                  verify_host=False, client_cert=True),
        TLSPolicy("verify-ca", encrypt=True, clear_fallback=False, verify_chain=True,
                  verify_host=False, client_cert=True),
        TLSPolicy("verify-full", encrypt=True, clear_fallback=False, verify_chain=True,
                  verify_host=True, client_cert=True),
    )
}

# The modes each side accepts. A router node has TLS only when configured, so a client has no
# use for prefer (it would hide a missing TLS); PostgreSQL servers often offer it, and
# `database.sslmode` defaults to prefer, as libpq and asyncpg do.
DATABASE_MODES: tuple[str, ...] = tuple(_TABLE)
CLIENT_MODES: tuple[str, ...] = ("disable", "require", "verify-ca", "verify-full")


def tls_policy(mode: str, *, has_root_cert: bool = False,
               modes: tuple[str, ...] = DATABASE_MODES) -> TLSPolicy:
    """The row for `mode`, one of `modes`; ValueError naming them otherwise. With a root
    certificate given, require checks the chain as verify-ca does (libpq's rule)."""
    if mode not in modes:
        raise ValueError(f"sslmode must be one of {', '.join(modes)}, got {mode!r}")
    if mode == "require" and has_root_cert:
        return _TABLE["verify-ca"]
    return _TABLE[mode]
