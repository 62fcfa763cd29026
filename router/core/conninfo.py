"""libpq connection strings (`key=value key='va lue'`), parsed and written as libpq does
(fe-connect.c `conninfo_parse`; pg_basebackup's `appendConnStrVal` for quoting), and a
standby's `primary_conninfo` re-pointed at another primary: the rest of it kept (user,
password or passfile, sslmode, application_name...), only where it connects replaced.

libpq's rules, as followed here: whitespace separates pairs and may surround `=`; a value is
either unquoted (up to the next whitespace) or in single quotes (up to the next unescaped
quote, whitespace kept); in both a backslash takes the next character literally. A repeated
keyword: the last one counts (libpq's rule), so a rewrite keeps one. The URI form
(`postgresql://user:password@host:port/dbname?key=value&...`) is read as libpq reads it
(`conninfo_uri_parse_options`: user, password, hosts and ports, dbname, then the query's
pairs, each percent-decoded; `ssl=true` means `sslmode=require`) and written back as
key=value pairs, which mean the same to libpq.
`conninfo_targets` says where a connection string goes (each host and port it names), so the
reconciliation (router/core/reconcile.py) can tell which node a standby streams from.
"""

from __future__ import annotations

from router.core.errors import ConninfoError

__all__ = ["DEFAULT_PORT", "conninfo_targets", "format_conninfo", "parse_conninfo",
           "quote_conninfo_value", "repoint_conninfo", "sql_literal"]

# C's isspace() in the C locale, which libpq uses (Python's str.isspace() takes more).
_SPACE = frozenset(" \t\n\v\f\r")
# Keywords are written back as they were read: only libpq's own shape is accepted.
_KEYWORD = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
# A value of only these characters goes unquoted (appendConnStrVal's set).
_BARE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")
_URI_PREFIXES = ("postgresql://", "postgres://")
# Where a connection goes: replaced together (hostaddr would win over the new host).
_WHERE = ("host", "hostaddr", "port")
DEFAULT_PORT = 5432  # libpq's when `port` is absent or an entry of its list is empty


def parse_conninfo(text: str) -> list[tuple[str, str]]:
    """The (keyword, value) pairs of `text`, in order, repeats included."""
    if text.startswith(_URI_PREFIXES):
        return _uri_pairs(text)
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n:
            return pairs
        start = i
        while i < n and text[i] != "=" and text[i] not in _SPACE:
            i += 1
        keyword = text[start:i]
        while i < n and text[i] in _SPACE:
            i += 1
        if i == n or text[i] != "=":
            raise ConninfoError(f'missing "=" after "{keyword}" in connection info string')
        if not keyword or not set(keyword) <= _KEYWORD:
            raise ConninfoError(f"invalid connection option {keyword!r}")
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i == n:
                    raise ConninfoError("unterminated quoted string in connection info string")
                char = text[i]
                if char == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                elif char == "'":
                    i += 1
                    break
                else:
                    value.append(char)
                    i += 1
        else:
            while i < n and text[i] not in _SPACE:
                if text[i] == "\\":
                    i += 1
                    if i < n:
                        value.append(text[i])
                        i += 1
                else:
                    value.append(text[i])
                    i += 1
        pairs.append((keyword, "".join(value)))


def _uri_pairs(uri: str) -> list[tuple[str, str]]:
    """The pairs of a connection URI, as libpq's conninfo_uri_parse_options finds them."""
    rest = uri.split("://", 1)[1]
    pairs: list[tuple[str, str]] = []
    at = _first_of(rest, "@/")
    if at < len(rest) and rest[at] == "@":  # user[:password]@
        user, colon, password = rest[:at].partition(":")
        if user:
            pairs.append(("user", _uri_decode(user)))
        if colon and password:
            pairs.append(("password", _uri_decode(password)))
        rest = rest[at + 1:]
    hosts: list[str] = []
    ports: list[str] = []
    while True:  # netloc[:port], several separated by commas
        if rest.startswith("["):  # an IPv6 address
            end = rest.find("]")
            if end < 0:
                raise ConninfoError('no matching "]" for an IPv6 host address in the URI')
            if end == 1:
                raise ConninfoError("an IPv6 host address may not be empty in the URI")
            host, rest = rest[1:end], rest[end + 1:]
            if rest and rest[0] not in ":/?,":
                raise ConninfoError(f'unexpected character "{rest[0]}" after an IPv6 address '
                                    "in the URI")
        else:
            end = _first_of(rest, ":/?,")
            host, rest = rest[:end], rest[end:]
        port = ""
        if rest.startswith(":"):
            end = _first_of(rest, "/?,", 1)
            port, rest = rest[1:end], rest[end:]
        hosts.append(host)
        ports.append(port)
        if not rest.startswith(","):
            break
        rest = rest[1:]
    # As libpq: stored when the joined text is not empty (two hosts without ports: port=",").
    if ",".join(hosts):
        pairs.append(("host", _uri_decode(",".join(hosts))))
    if ",".join(ports):
        pairs.append(("port", _uri_decode(",".join(ports))))
    if rest.startswith("/"):
        end = _first_of(rest, "?")
        if end > 1:
            pairs.append(("dbname", _uri_decode(rest[1:end])))
        rest = rest[end:]
    if rest.startswith("?"):
        params = rest[1:].split("&") if rest[1:] else []
        if len(params) > 1 and params[-1] == "":  # one '&' may end the query
            params.pop()
        for param in params:
            keyword, equals, value = param.partition("=")
            if not equals:
                raise ConninfoError(f'missing "=" in the URI query parameter "{param}"')
            if "=" in value:
                raise ConninfoError(f'extra "=" in the URI query parameter "{param}"')
            keyword, value = _uri_decode(keyword), _uri_decode(value)
            if (keyword, value) == ("ssl", "true"):  # libpq's JDBC compatibility
                keyword, value = "sslmode", "require"
            if not keyword or not set(keyword) <= _KEYWORD:
                raise ConninfoError(f"invalid URI query parameter {keyword!r}")
            pairs.append((keyword, value))
    return pairs


def _first_of(text: str, stops: str, start: int = 0) -> int:
    """The index of the first of `stops` in `text` from `start`, or its length."""
    return next((i for i in range(start, len(text)) if text[i] in stops), len(text))


def _uri_decode(text: str) -> str:
    """libpq's conninfo_uri_decode: %XX is that byte (not %00); nothing else changes ('+'
    stays '+'). The bytes are read as UTF-8, as the server's settings are."""
    out = bytearray()
    i = 0
    raw = text.encode()
    while i < len(raw):
        if raw[i] != ord("%"):
            out.append(raw[i])
            i += 1
            continue
        digits = raw[i + 1:i + 3].decode("ascii", "replace")
        if len(digits) != 2 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ConninfoError(f'invalid percent-encoded token in the URI: "{text}"')
        if digits == "00":
            raise ConninfoError(f'forbidden value %00 in a percent-encoded URI value: "{text}"')
        out.append(int(digits, 16))
        i += 3
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise ConninfoError(f'a percent-encoded URI value is not UTF-8: "{text}"') from None


def quote_conninfo_value(value: str) -> str:
    """`value` as libpq reads it back: bare when it is only letters, digits, `_` and `.`;
    otherwise in single quotes with `'` and `\\` escaped by a backslash."""
    if value and set(value) <= _BARE:
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def format_conninfo(pairs: list[tuple[str, str]]) -> str:
    for keyword, _ in pairs:
        if not keyword or not set(keyword) <= _KEYWORD:
            raise ConninfoError(f"invalid connection option {keyword!r}")
    return " ".join(f"{k}={quote_conninfo_value(v)}" for k, v in pairs)


def repoint_conninfo(text: str, host: str, port: int) -> str:
    """`text` with `host` and `port` in place of where it connected (host, hostaddr, port;
    several hosts included), every other setting kept as it was, in its order."""
    pairs: list[tuple[str, str]] = []
    placed = False
    for keyword, value in _last_of_each(parse_conninfo(text)):
        if keyword in _WHERE:
            if not placed:
                pairs += [("host", host), ("port", str(port))]
                placed = True
            continue
        pairs.append((keyword, value))
    if not placed:
        pairs += [("host", host), ("port", str(port))]
    return format_conninfo(pairs)


def conninfo_targets(text: str) -> tuple[tuple[str, int], ...]:
    """Where `text` connects, as libpq tries them in order: (host, port) per entry of its
    `host`/`hostaddr` lists (`hostaddr` wins where both name one: libpq connects there), with
    `port`'s one entry for all or its entry for each (an empty one: DEFAULT_PORT). A missing
    host is "" (libpq's default Unix socket). Refused like libpq: lists of different lengths,
    a port that is no number."""
    pairs = dict(parse_conninfo(text))  # a repeated keyword: its last value counts
    hosts = pairs.get("host", "").split(",")
    addresses = pairs.get("hostaddr", "").split(",")
    ports = pairs.get("port", "").split(",")
    count = max(len(hosts), len(addresses))
    if "hostaddr" in pairs and "host" in pairs and len(hosts) != len(addresses):
        raise ConninfoError(f"could not match {len(hosts)} host names to {len(addresses)} "
                            f"hostaddr values")
    if len(ports) not in (1, count):
        raise ConninfoError(f"could not match {len(ports)} port numbers to {count} hosts")
    targets: list[tuple[str, int]] = []
    for i in range(count):
        host = addresses[i] if i < len(addresses) and addresses[i] else (
            hosts[i] if i < len(hosts) else "")
        port = (ports[0] if len(ports) == 1 else ports[i]).strip()
        if port and not (port.isascii() and port.isdigit()):
            raise ConninfoError(f"invalid port number: {port!r}")
        targets.append((host, int(port) if port else DEFAULT_PORT))
    return tuple(targets)


def _last_of_each(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # libpq lets a repeated keyword's last value win: keep that one, at its first place.
    last = dict(pairs)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for keyword, _ in pairs:
        if keyword not in seen:
            seen.add(keyword)
            out.append((keyword, last[keyword]))
    return out


def sql_literal(text: str) -> str:
    """`text` as an SQL string literal, as PostgreSQL's quote_literal() writes it (an E''
    literal when it holds a backslash), so it reads back the same whatever
    standard_conforming_strings says. For statements that take no parameters (ALTER SYSTEM)."""
    if "\x00" in text:
        raise ConninfoError("a NUL character cannot be in an SQL string")
    quoted = text.replace("'", "''")
    if "\\" in text:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"
