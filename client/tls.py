"""TLS to a router node's TCP listener, chosen as libpq chooses it for PostgreSQL: in the
address (`georoute://host:6600?sslmode=verify-full&sslrootcert=/path/ca.pem`) or as an
`ssl.SSLContext` given to `connect`. Unix sockets never use it. A router that asks for client
certificates (`router.tls_client_ca_file`) gets the one named by `sslcert` and `sslkey`.
What each mode checks is protocol/tlsmode.py's table, shared with the router."""

from __future__ import annotations

import ssl

from protocol.tlsmode import CLIENT_MODES, tls_policy

__all__ = ["SSL_MODES", "ssl_context"]

SSL_MODES = CLIENT_MODES


def ssl_context(sslmode: str, sslrootcert: str | None = None, sslcert: str | None = None,
                sslkey: str | None = None) -> ssl.SSLContext | None:
    """The context for `sslmode` (None for disable), presenting the client certificate
    `sslcert` (its key in `sslkey`, or in the same file) when given."""
    policy = tls_policy(sslmode, has_root_cert=bool(sslrootcert), modes=CLIENT_MODES)
    if not policy.encrypt:
        if sslcert:
            raise ValueError("a client certificate (sslcert) needs TLS: sslmode is disable")
        return None
    if policy.verify_chain:
        ctx = ssl.create_default_context(cafile=sslrootcert or None)
        ctx.check_hostname = policy.verify_host
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if sslcert:
        # An encrypted key fails here rather than prompting on a terminal for its password.
        ctx.load_cert_chain(sslcert, sslkey or None, password=_no_password)
    elif sslkey:
        raise ValueError("sslkey without sslcert")
    return ctx


def _no_password() -> str:
    raise ValueError("the key is encrypted; give an unencrypted key file")
