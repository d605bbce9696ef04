"""Consistent Overhead Byte Stuffing (Cheshire & Baker, 1999).

``encode`` removes every 0x00 byte from a block, so 0x00 can delimit frames on the wire. The
encoded length is ``len(data) + 1 + len(data) // 254`` at most. It produces the same bytes as the
reference C encoder in the spec: ``encode(b"") == b"\\x01"``,
``encode(b"\\x00") == b"\\x01\\x01"``, ``encode(b"\\x11\\x00\\x22") == b"\\x02\\x11\\x02\\x22"``.
Frames of this protocol are shorter than 254 bytes, so the 0xFF block case never occurs on the
wire, but both functions handle it.
"""

from __future__ import annotations

from firmware_protocol.errors import CobsError


def max_encoded_len(n: int) -> int:
    """Longest COBS encoding of ``n`` bytes."""
    return n + 1 + n // 254


def encode(data: bytes) -> bytes:
    """COBS-encode ``data``; the result contains no 0x00 byte."""
    out = bytearray()
    for chunk in bytes(data).split(b"\x00"):
        # Each zero-free chunk becomes one or more blocks of at most 254 data bytes.
        while len(chunk) >= 254:
            out.append(0xFF)
            out += chunk[:254]
            chunk = chunk[254:]
        out.append(len(chunk) + 1)
        out += chunk
    return bytes(out)


def decode(data: bytes) -> bytes:
    """Decode one COBS block (without delimiters). Raise :class:`CobsError` if it is invalid."""
    out = bytearray()
    i = 0
    n = len(data)
    if n == 0:
        raise CobsError("empty COBS block")
    while i < n:
        code = data[i]
        if code == 0:
            raise CobsError(f"zero byte inside COBS block at offset {i}")
        end = i + code
        if end > n:
            raise CobsError(f"COBS code 0x{code:02x} at offset {i} runs past the end ({n} bytes)")
        block = data[i + 1 : end]
        if 0 in block:
            raise CobsError(f"zero byte inside COBS block at offset {i + 1 + block.index(0)}")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
