"""Frame codec: message <-> bytes on the wire. Pure: no I/O, no clocks.

A frame is ``header | payload | crc16`` with header = version u8, type u8, seq u16 LE, payload
fields little-endian, and the CRC-16/CCITT-FALSE of header and payload appended big-endian. The
frame is COBS-encoded and written between two 0x00 delimiters: ``00 <cobs(frame)> 00``.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Callable

from firmware_protocol import cobs
from firmware_protocol.crc import crc16
from firmware_protocol.errors import (
    FRAME_ERROR_KINDS,
    CrcError,
    FrameError,
    FrameTooLongError,
    FrameTooShortError,
    PayloadLengthError,
    UnknownTypeError,
    VersionError,
)
from firmware_protocol.messages import (
    CRC_SIZE,
    HEADER_SIZE,
    HELLO_FROZEN_SIZE,
    MAX_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    Hello,
    Message,
)

DELIMITER = b"\x00"
MIN_FRAME = HEADER_SIZE + CRC_SIZE  # 6
MAX_ENCODED = cobs.max_encoded_len(MAX_FRAME)  # 65 bytes between two delimiters
MAX_WIRE = MAX_ENCODED + 2  # 67 bytes with both delimiters

_HEADER = struct.Struct("<BBH")


def pack(msg: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """The frame before COBS: header, payload, CRC (big-endian).

    ``version`` other than ours is only for simulating a peer of another protocol version.
    """
    body = _HEADER.pack(version, msg.TYPE, msg.seq) + msg.payload()
    return body + crc16(body).to_bytes(2, "big")


def encode(msg: Message, version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes to write on the wire for ``msg``: ``00 cobs(pack(msg)) 00``."""
    return DELIMITER + cobs.encode(pack(msg, version)) + DELIMITER


def unpack(frame: bytes, version: int = PROTOCOL_VERSION) -> Message:
    """Parse a frame (after COBS decoding). Raise a :class:`FrameError` subclass if invalid.

    Frames of another protocol ``version`` are refused, except HELLO (see below).
    """
    n = len(frame)
    if n < MIN_FRAME:
        raise FrameTooShortError(f"frame of {n} bytes, shorter than {MIN_FRAME}")
    if n > MAX_FRAME:
        raise FrameTooLongError(f"frame of {n} bytes, longer than {MAX_FRAME}")
    body = frame[:-CRC_SIZE]
    got = int.from_bytes(frame[-CRC_SIZE:], "big")
    want = crc16(body)
    if got != want:
        raise CrcError(f"CRC 0x{got:04x} != 0x{want:04x}")
    frame_version, type_code, seq = _HEADER.unpack_from(body)
    payload = body[HEADER_SIZE:]
    cls = MESSAGES.get(type_code)
    if frame_version != version:
        # HELLO's first 13 payload bytes are frozen across versions, so a peer of another
        # version can still be identified (and refused) by the handshake.
        if cls is Hello and len(payload) >= HELLO_FROZEN_SIZE:
            payload = payload[:HELLO_FROZEN_SIZE]
        else:
            raise VersionError(f"protocol version {frame_version}, expected {version}")
    if cls is None:
        raise UnknownTypeError(f"unknown message type 0x{type_code:02x}")
    if len(payload) != cls.STRUCT.size:
        raise PayloadLengthError(f"{cls.NAME} payload of {len(payload)} bytes, expected {cls.STRUCT.size}")
    return cls(*cls.STRUCT.unpack(payload), seq=seq)


def decode(wire: bytes) -> Message:
    """Decode exactly one frame, with or without its delimiters. Raise FrameError if invalid."""
    block = wire.strip(DELIMITER)
    if DELIMITER in block:
        raise FrameError("more than one frame")
    if len(block) > MAX_ENCODED:
        raise FrameTooLongError(f"{len(block)} encoded bytes, longer than {MAX_ENCODED}")
    return unpack(cobs.decode(block))


class Decoder:
    """Incremental decoder: bytes in any chunking give the same messages.

    Invalid input never raises: each bad frame increments ``errors[kind]`` (see
    :data:`~firmware_protocol.errors.FRAME_ERROR_KINDS`), is passed to ``on_error`` if given, and
    decoding resumes at the next 0x00 delimiter. Empty blocks (consecutive delimiters) are not
    errors. More than :data:`MAX_ENCODED` bytes without a delimiter count once as ``too_long``;
    the rest up to the next delimiter is discarded.
    """

    def __init__(
        self, on_error: Callable[[FrameError], None] | None = None, *, version: int = PROTOCOL_VERSION
    ) -> None:
        self.version = version
        self._buf = bytearray()
        self._discarding = False
        self._on_error = on_error
        self.errors: Counter[str] = Counter(dict.fromkeys(FRAME_ERROR_KINDS, 0))
        self.frames = 0
        self.last_error: FrameError | None = None

    @property
    def error_count(self) -> int:
        """Total invalid frames seen."""
        return sum(self.errors.values())

    @property
    def pending(self) -> int:
        """Bytes held while waiting for a delimiter."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget a partial frame (e.g. after reopening the link). Counters are kept."""
        self._buf.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[Message]:
        """Consume ``data``; return the messages completed by it, in order."""
        if not isinstance(data, bytes | bytearray):
            data = bytes(data)  # memoryview and other bytes-like objects
        out: list[Message] = []
        start = 0
        n = len(data)
        while start < n:
            end = data.find(0, start)
            if end < 0:
                self._append(data[start:])
                break
            self._append(data[start:end])
            if self._discarding:
                self._discarding = False
            elif self._buf:
                self._finish(bytes(self._buf), out)
            self._buf.clear()
            start = end + 1
        return out

    def _append(self, chunk: bytes) -> None:
        if self._discarding or not chunk:
            return
        self._buf += chunk
        if len(self._buf) > MAX_ENCODED:
            self._buf.clear()
            self._discarding = True
            self._error(FrameTooLongError(f"more than {MAX_ENCODED} bytes without a delimiter"))

    def _finish(self, block: bytes, out: list[Message]) -> None:
        try:
            out.append(unpack(cobs.decode(block), self.version))
        except FrameError as exc:
            self._error(exc)
        else:
            self.frames += 1

    def _error(self, exc: FrameError) -> None:
        self.errors[exc.kind] += 1
        self.last_error = exc
        if self._on_error is not None:
            self._on_error(exc)
