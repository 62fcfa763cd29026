"""Parsing of georoute:// addresses: `georoute://[token@]host[:port][,host[:port]...][?k=v]`.

A host that is a directory, percent-encoded (`georoute://%2Ftmp:6600`) or not
(`georoute:///tmp:6600`), names the router's Unix socket `<dir>/.s.georoute.<port>`, as
libpq does for PostgreSQL's."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

__all__ = ["DEFAULT_PORT", "Dsn", "parse_dsn"]

DEFAULT_PORT = 6600


@dataclass(frozen=True, slots=True)
class Dsn:
    addresses: tuple[tuple[str, int], ...]
    token: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):  # [ipv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = unquote(text).partition(":")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    port = int(port_text) if port_text else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"bad port in {text!r}")
    return host, port


def parse_dsn(dsn: str) -> Dsn:
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme != "georoute":
        raise ValueError("a georoute address starts with georoute://")
    rest, _, query = rest.partition("?")
    rest = rest.rstrip("/")
    token: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        token = unquote(userinfo) or None
    addresses = tuple(_host_port(part) for part in rest.split(",") if part)
    if not addresses:
        raise ValueError("a georoute address names at least one host")
    options = dict(parse_qsl(query))
    token = options.pop("token", token)
    return Dsn(addresses, token, options)
