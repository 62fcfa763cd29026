"""DataRow messages to rows, for the pipelined connections (router/backend/pgwire.py): a run of
them at once, by the compiled decoder (router/backend/_rowdecode.c) or, where it is not built,
by the same in Python. Both give the same rows and the same errors (tests/unit/test_pgrows.py).

`decode_rows(buf, pos, decoders, rows)` reads the complete DataRow messages that follow one
another from `pos` in `buf`, appends each row (a list) to `rows`, and returns the position after
the last it read: at a message of another kind, an incomplete one, or the end of the buffer.
- A well-framed value its decoder cannot return (a year past 9999, invalid UTF-8, a binary
  value of the wrong width) stops it after that row, which is not appended: it returns
  (position after the row, the column's index, the exception), and the request fails.
- A malformed row (a length past its end, another number of columns, bytes after the last
  column) raises ValueError: the stream can no longer be read.

The environment variable GEOROUTE_ROW_DECODER chooses: `python` forces the Python one, `c`
requires the compiled one (an ImportError without it); unset, the compiled one where built.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgpack

from router.backend.pgtypes import ROW_KINDS, Decoder
from router.backend.wirevalues import PYTHON_RANGE, ResultValueError

__all__ = ["IMPLEMENTATION", "MAX_MESSAGE", "ROW_DECODER_ENV", "VALUE_ERRORS",
           "compiled_decoder", "decode_rows", "decode_rows_python"]

ROW_DECODER_ENV = "GEOROUTE_ROW_DECODER"

log = logging.getLogger("georoute.pgrows")

# What a decoder raises for a value Python cannot hold: that request fails, not the stream.
VALUE_ERRORS = (ValueError, ArithmeticError, UnicodeDecodeError, ResultValueError)

MAX_MESSAGE = 1 << 30  # PostgreSQL's own limit on a message (MaxAllocSize)

RowsDecoder = Callable[[bytearray, int, tuple[Decoder, ...], list[Any]],
                       "int | tuple[int, int, Exception]"]

_i32_from = struct.Struct("!i").unpack_from
_i16_from = struct.Struct("!h").unpack_from


def decode_rows_python(buf: bytearray, pos: int, decoders: tuple[Decoder, ...],
                       rows: list[Any]) -> int | tuple[int, int, Exception]:
    """The module's `decode_rows`, in Python."""
    size = len(buf)
    width = len(decoders)
    while size - pos >= 5 and buf[pos] == 68:  # 'D' DataRow
        length = _i32_from(buf, pos + 1)[0]
        if not 4 <= length <= MAX_MESSAGE:
            raise ValueError(f"message 'D' of length {length}")
        end = pos + 1 + length
        if end > size:
            break
        p = pos + 7  # past the header and the column count
        if p > end or _i16_from(buf, pos + 5)[0] != width:
            raise ValueError("a row with another number of columns than described")
        row: list[Any] = []
        for dec in decoders:
            if end - p < 4:
                raise ValueError("a column length past the end of its row")
            n = _i32_from(buf, p)[0]
            p += 4
            if n < 0:
                if n != -1:
                    raise ValueError(f"a column of length {n}")
                row.append(None)
            elif n > end - p:
                raise ValueError("a column value past the end of its row")
            else:
                try:
                    row.append(dec(buf, p, n))
                except VALUE_ERRORS as exc:
                    return end, len(row), exc
                p += n
        if p != end:
            raise ValueError("bytes after the last column of a row")
        rows.append(row)
        pos = end
    return pos


def compiled_decoder() -> RowsDecoder:
    """The compiled decode_rows, ready to use (ImportError where it is not built)."""
    from router.backend import _rowdecode

    kinds = {dec: int(kind) | code << 8 for dec, (kind, code) in ROW_KINDS.items()}
    _rowdecode.configure(kinds, msgpack.ExtType, Decimal, VALUE_ERRORS, PYTHON_RANGE)
    decode: RowsDecoder = _rowdecode.decode_rows
    return decode


def _choose() -> tuple[RowsDecoder, str]:
    wanted = os.environ.get(ROW_DECODER_ENV, "").strip().lower()
    if wanted == "python":
        return decode_rows_python, "python"
    if wanted not in ("", "c"):
        raise ValueError(f"{ROW_DECODER_ENV}={wanted!r}: expected 'c' or 'python'")
    try:
        return compiled_decoder(), "c"
    except ImportError as exc:
        if wanted == "c":
            raise
        log.warning("the compiled row decoder is not built (%s): rows are decoded in Python, "
                    "more slowly; reinstall with a C compiler and Python's headers", exc)
        return decode_rows_python, "python"


decode_rows, IMPLEMENTATION = _choose()
