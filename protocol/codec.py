"""Framing: a 4-byte big-endian length prefix, then one MessagePack body. `FrameDecoder` turns
arbitrary chunks of bytes into messages; `Encoder` turns messages (or reply fields, on the
router's hot path) into framed bytes. Pure: no sockets, no event loop."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import (
    EncodeError,
    ErrorCode,
    FrameTooLarge,
    MalformedFrame,
    ProtocolError,
    is_retryable,
)
from protocol.messages import Message, MessageType, RouteInfo, message_from_wire
from protocol.values import ext_default, ext_hook

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "HEADER_BYTES",
    "Encoder",
    "FrameDecoder",
    "Rejected",
    "decode_body",
    "encode",
    "encode_error",
    "encode_many",
    "encode_rows",
    "encode_status",
    "route_wire_of",
]

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
HEADER_BYTES = 4
_HEADER = struct.Struct(">I")
_MAX_HEADER_VALUE = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Rejected:
    """What FrameDecoder yields, in place of a message, for a well-framed message it refuses
    (a request with bad field values, an unknown type code): the receiver answers that one
    request with an Error of this code, and the connection goes on."""

    id: int
    code: ErrorCode
    message: str


def decode_body(body: bytes | memoryview) -> Message:
    """Decode one frame body (without its length prefix)."""
    try:
        obj = msgpack.unpackb(body, raw=False, ext_hook=ext_hook, strict_map_key=True)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many kinds; the peer sees one
        raise MalformedFrame(f"invalid MessagePack body: {exc}") from exc
    return message_from_wire(obj)


class FrameDecoder:
    """Incremental decoder: `feed(chunk)` returns the messages completed so far, and a
    `Rejected` for each well-framed message that is refused (its fields are bad, or its type
    is unknown): the frames after it are still read.

    Input that cannot be parsed raises a ProtocolError; the decoder is then poisoned (every
    later feed raises again) because the stream can no longer be trusted. The error's
    `messages` attribute holds the messages decoded earlier in the same feed call, and
    `request_id` the offending request's id when it could be read.

    The buffer is a bytearray consumed once per feed (not once per frame), and bodies are
    decoded from a memoryview, so a chunk is copied O(1) times whatever its frame count.
    """

    __slots__ = ("_buffer", "_error", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)

    @property
    def poisoned(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message | Rejected]:
        if self._error is not None:
            err = self._error
            raise type(err)(f"decoder unusable after an earlier error: {err.message}")
        buffer = self._buffer
        # With nothing buffered (the usual case: replies arrive as whole frames) the frames are
        # decoded straight from `data`, and only an incomplete tail is copied into the buffer.
        source: bytes | bytearray | memoryview
        if buffer:
            buffer += data
            source = buffer
        else:
            source = data
        size = len(source)
        out: list[Message | Rejected] = []
        pos = 0
        limit = self.max_frame_bytes
        try:
            with memoryview(source) as view:
                while size - pos >= HEADER_BYTES:
                    (length,) = _HEADER.unpack_from(view, pos)
                    if length > limit:
                        raise FrameTooLarge(f"frame of {length} bytes exceeds limit {limit}")
                    if length == 0:
                        raise MalformedFrame("empty frame")
                    end = pos + HEADER_BYTES + length
                    if end > size:
                        break
                    body = view[pos + HEADER_BYTES : end]
                    try:
                        out.append(decode_body(body))
                    except ProtocolError as exc:
                        if exc.fatal or exc.request_id is None:
                            raise
                        out.append(Rejected(exc.request_id, exc.code, exc.message))
                    finally:
                        body.release()
                    pos = end
                if source is not buffer and pos < size:
                    buffer += view[pos:]
        except ProtocolError as exc:
            self._error = exc
            exc.messages = out  # type: ignore[attr-defined]
            buffer.clear()
            raise
        if source is buffer and pos:
            del buffer[:pos]
        return out


def route_wire_of(route: RouteInfo | list[str] | None) -> list[str] | None:
    """RouteInfo's wire form, [shard, node, role]; a list is taken to be that form already."""
    if route is None or isinstance(route, list):
        return route
    return [route.shard, route.node, route.role._value_]


class Encoder:
    """Frames messages. Holds one msgpack Packer, so one Encoder per thread (or event loop)."""

    __slots__ = ("_packer", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = min(max_frame_bytes, _MAX_HEADER_VALUE)
        self._packer = msgpack.Packer(default=ext_default, use_bin_type=True, autoreset=True)

    def _frame(self, body_list: list[Any]) -> bytes:
        try:
            body = self._packer.pack(body_list)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"cannot encode message: {exc}") from exc
        n = len(body)
        if n > self.max_frame_bytes:
            raise EncodeError(f"encoded message of {n} bytes exceeds the frame limit")
        return _HEADER.pack(n) + body

    def encode(self, message: Message) -> bytes:
        """One message -> length prefix + body."""
        return self._frame(message.to_wire())

    def encode_many(self, messages: Iterable[Message]) -> bytes:
        """Several messages -> one buffer for a single transport.write()."""
        frame = self._frame
        return b"".join([frame(m.to_wire()) for m in messages])

    def encode_rows(
        self,
        request_id: int,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        status: str = "",
        route: RouteInfo | list[str] | None = None,
        ryw_token: str | None = None,
        column_types: Sequence[str] | None = None,
        ryw_tokens: Sequence[str] | None = None,
    ) -> bytes:
        """A framed Rows reply without building a Rows object (rows may be tuples, e.g.
        asyncpg Records converted by `list(map(tuple, records))`). `route` may be given in
        its wire form already, [shard, node, role] (see `route_wire`)."""
        route_wire = route_wire_of(route)
        return self._frame(
            [MessageType.ROWS, request_id, columns, rows, status, route_wire, ryw_token,
             column_types, list(ryw_tokens) if ryw_tokens else None]
        )

    def encode_status(
        self,
        request_id: int,
        status: str,
        rowcount: int = 0,
        route: RouteInfo | list[str] | None = None,
        ryw_token: str | None = None,
        ryw_tokens: Sequence[str] | None = None,
    ) -> bytes:
        route_wire = route_wire_of(route)
        return self._frame(
            [MessageType.STATUS, request_id, status, rowcount, route_wire, ryw_token,
             list(ryw_tokens) if ryw_tokens else None]
        )

    def encode_error(
        self,
        request_id: int,
        code: int,
        message: str,
        *,
        name: str | None = None,
        sqlstate: str | None = None,
        retryable: bool | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bytes:
        """A framed Error reply; name and retryable default from the ErrorCode table."""
        if name is None:
            try:
                name = ErrorCode(code).name
            except ValueError:
                name = "UNKNOWN"
        if retryable is None:
            retryable = is_retryable(code)
        return self._frame(
            [
                MessageType.ERROR,
                request_id,
                int(code),
                name,
                message,
                sqlstate,
                retryable,
                detail or None,
            ]
        )


_DEFAULT_ENCODER = Encoder()

# Module-level shortcuts on a shared Encoder (default frame limit). Not thread-safe: threads
# should each build their own Encoder.
encode = _DEFAULT_ENCODER.encode
encode_many = _DEFAULT_ENCODER.encode_many
encode_rows = _DEFAULT_ENCODER.encode_rows
encode_status = _DEFAULT_ENCODER.encode_status
encode_error = _DEFAULT_ENCODER.encode_error
