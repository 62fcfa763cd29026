"""TLS to a router node's TCP listener, chosen as libpq chooses it for PostgreSQL: in the
address (`georoute://host:6600?sslmode=verify-full&sslrootcert=/path/ca.pem`) or as an
`ssl.SSLContext` given to `connect`. Unix sockets never use it. A router that asks for client
certificates (`router.tls_client_ca_file`) gets the one named by `sslcert` and `sslkey`."""

from __future__ import annotations

import ssl

__all__ = ["SSL_MODES", "ssl_context"]

# disable: no TLS (the default: a router has none unless configured). require: TLS, the
# certificate not checked (unless sslrootcert is given: then as verify-ca, like libpq).
# verify-ca: it must chain to sslrootcert (or the system's CAs). verify-full: and name the
# host connected to.
SSL_MODES = ("disable", "require", "verify-ca", "verify-full")


def ssl_context(sslmode: str, sslrootcert: str | None = None, sslcert: str | None = None,
                sslkey: str | None = None) -> ssl.SSLContext | None:  # fmt: skip
    """The context for `sslmode` (None for disable), presenting the client certificate
    `sslcert` (its key in `sslkey`, or in the same file) when given."""
    if sslmode not in SSL_MODES:
        raise ValueError(f"sslmode must be one of {', '.join(SSL_MODES)}, got {sslmode!r}")
    if sslmode == "disable":
        if sslcert:
            raise ValueError("a client certificate (sslcert) needs TLS: sslmode is disable")
        return None
    ctx = _server_check(sslmode, sslrootcert)
    if sslcert:
        # An encrypted key fails here rather than prompting on a terminal for its password.
        ctx.load_cert_chain(sslcert, sslkey or None, password=_no_password)
    elif sslkey:
        raise ValueError("sslkey without sslcert")
    return ctx


def _no_password() -> str:
    raise ValueError("the key is encrypted; give an unencrypted key file")


def _server_check(sslmode: str, sslrootcert: str | None) -> ssl.SSLContext:
    """A context that checks the server's certificate as `sslmode` says."""
    if sslmode == "require" and sslrootcert:
        sslmode = "verify-ca"  # as libpq does when a root certificate is given
    if sslmode == "require":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context(cafile=sslrootcert or None)
    ctx.check_hostname = sslmode == "verify-full"
    return ctx
