"""CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR.

Check value: ``crc16(b"123456789") == 0x29B1``. ``binascii.crc_hqx`` computes exactly this CRC
in C, so no table is needed here; the spec gives a bitwise C reference.
"""

from __future__ import annotations

import binascii

CRC_INIT = 0xFFFF
CRC_POLY = 0x1021
CRC_CHECK = 0x29B1  # crc16(b"123456789")


def crc16(data: bytes) -> int:
    """Return the CRC-16/CCITT-FALSE of ``data`` (0..0xFFFF)."""
    return binascii.crc_hqx(data, CRC_INIT)


def crc16_bitwise(data: bytes) -> int:
    """The same CRC computed bit by bit, as the spec's C reference does (for tests)."""
    crc = CRC_INIT
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc
