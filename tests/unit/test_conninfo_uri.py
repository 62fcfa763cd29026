"""A standby's primary_conninfo in URI form (`postgresql://...`) is read as libpq reads it and
re-pointed like the key=value form. The oracle is libpq itself: `PQconninfoParse` from the
libpq of the PostgreSQL the local cluster runs (router/tools/localcluster/binaries.py).
(One difference, by design: a keyword libpq does not know, `?ssl=false` for one, is kept
rather than refused; the standby's own libpq judges it, as it did before.)"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.core.conninfo import parse_conninfo, repoint_conninfo
from router.core.errors import ConninfoError
from router.tools.localcluster.binaries import find_pg_bin


class _Option(ctypes.Structure):
    _fields_ = [("keyword", ctypes.c_char_p), ("envvar", ctypes.c_char_p),
                ("compiled", ctypes.c_char_p), ("val", ctypes.c_char_p),
                ("label", ctypes.c_char_p), ("dispchar", ctypes.c_char_p),
                ("dispsize", ctypes.c_int)]


@pytest.fixture(scope="module")
def libpq() -> Iterator[ctypes.CDLL]:
    bin_dir = find_pg_bin("", Path.cwd()).bin_dir
    beside = sorted((bin_dir.parent / "lib").glob("libpq.so*"))
    found = str(beside[0]) if beside else ctypes.util.find_library("pq")
    assert found, f"no libpq beside {bin_dir} or on the system to compare with"
    lib = ctypes.CDLL(found)
    lib.PQconninfoParse.restype = ctypes.POINTER(_Option)
    lib.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.PQconninfoFree.argtypes = [ctypes.POINTER(_Option)]
    lib.PQfreemem.argtypes = [ctypes.c_void_p]
    yield lib


def _libpq_reads(lib: ctypes.CDLL, text: str) -> dict[str, str] | None:
    """What libpq makes of `text` (the options it sets), or None when it refuses it."""
    error = ctypes.c_char_p()
    options = lib.PQconninfoParse(text.encode(), ctypes.byref(error))
    if not options:
        if error:
            lib.PQfreemem(error)
        return None
    out = {}
    i = 0
    while options[i].keyword:
        if options[i].val is not None:
            out[options[i].keyword.decode()] = options[i].val.decode()
        i += 1
    lib.PQconninfoFree(options)
    return out


_READ_ALIKE = [
    "postgresql://replicator:s%40cret@10.0.0.7:5433/postgres?application_name=asia_b"
    "&sslmode=prefer",
    "postgres://h",
    "postgresql://",
    "postgresql://u@h",
    "postgresql://u:@h/db",
    "postgresql://:pw@h:1",
    "postgresql://u:p:w@h",
    "postgresql://h1:5432,h2:5433,h3/db",
    "postgresql://h1,h2",
    "postgresql://[::1]:5432/db",
    "postgresql://[fe80::1%25eth0],[::2]:7/x",
    "postgresql://%2Fvar%2Frun%2Fpostgresql/db",
    "postgresql:///db?host=/tmp&port=5555",
    "postgresql://h/?",
    "postgresql://h?application_name=a+b%20c&",
    "postgresql://h/db%3Fname?ssl=true",
    "postgresql://h:5432?passfile=%2Froot%2F.pgpass&target_session_attrs=any",
    "postgresql://us%C3%A9r@h",
]

_REFUSED_ALIKE = [
    "postgresql://h?application_name",
    "postgresql://h?a=b=c",
    "postgresql://h?application_name=x&&port=1",
    "postgresql://[::1",
    "postgresql://[]:5432",
    "postgresql://[::1]x",
    "postgresql://h/db%zz",
    "postgresql://h/db%0",
    "postgresql://h/db%00",
]


@pytest.mark.parametrize("uri", _READ_ALIKE)
def test_a_uri_reads_as_libpq_reads_it(libpq: ctypes.CDLL, uri: str) -> None:
    expected = _libpq_reads(libpq, uri)
    assert expected is not None, f"libpq refuses {uri}: fix the case"
    assert dict(parse_conninfo(uri)) == expected


@pytest.mark.parametrize("uri", _REFUSED_ALIKE)
def test_what_libpq_refuses_in_a_uri_is_refused(libpq: ctypes.CDLL, uri: str) -> None:
    assert _libpq_reads(libpq, uri) is None, f"libpq reads {uri}: fix the case"
    with pytest.raises(ConninfoError):
        parse_conninfo(uri)


def test_a_uri_conninfo_is_repointed_keeping_every_other_setting(libpq: ctypes.CDLL) -> None:
    uri = ("postgresql://replicator:s%40cret@10.0.0.7:5433,10.0.0.8/postgres"
           "?application_name=asia_b&sslmode=prefer&hostaddr=10.0.0.7")
    rewritten = repoint_conninfo(uri, "127.0.0.1", 6001)
    assert not rewritten.startswith("postgresql:")
    after = _libpq_reads(libpq, rewritten)
    before = _libpq_reads(libpq, uri)
    assert after is not None and before is not None
    assert {k: v for k, v in after.items() if k not in ("host", "hostaddr", "port")} == {
        k: v for k, v in before.items() if k not in ("host", "hostaddr", "port")}
    assert (after["host"], after["port"], after.get("hostaddr")) == ("127.0.0.1", "6001", None)
    assert after["password"] == "s@cret"
    assert repoint_conninfo(rewritten, "127.0.0.1", 6001) == rewritten
