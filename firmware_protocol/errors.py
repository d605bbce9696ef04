"""The exception tree of the firmware protocol.

Everything this package raises on purpose is a :class:`ProtocolError` (itself a
:class:`metaemg.errors.MetaEMGError`). Three families matter to callers:

* :class:`FrameError` - one received frame is invalid. The :class:`~firmware_protocol.codec.Decoder`
  never raises these; it counts them by :attr:`FrameError.kind` and resynchronises.
* :class:`HandshakeError` - the peer speaks another protocol version or message schema. Fail closed:
  send no commands.
* :class:`LinkError` - the byte pipe itself failed. :class:`LinkLost` (unplugged, pty master closed)
  and :class:`LinkUnavailable` (nothing to open yet) are both recovered by reopening the same URL.
"""

from __future__ import annotations

import builtins

from metaemg.errors import MetaEMGError


class ProtocolError(MetaEMGError):
    """Root of every error raised by :mod:`firmware_protocol`."""


class MessageValueError(ProtocolError, ValueError):
    """A message field does not fit its wire type (e.g. a u8 field given 300)."""


# -- frames ------------------------------------------------------------------------------------


class FrameError(ProtocolError):
    """A received frame is invalid. ``kind`` names the counter the decoder increments."""

    kind = "frame"


class CobsError(FrameError):
    """The bytes between two delimiters are not valid COBS."""

    kind = "cobs"


class FrameTooShortError(FrameError):
    """The decoded frame is shorter than header + CRC (a truncated frame)."""

    kind = "too_short"


class FrameTooLongError(FrameError):
    """More bytes arrived without a delimiter than the longest valid frame (oversized)."""

    kind = "too_long"


class CrcError(FrameError):
    """The CRC-16 does not match header and payload (corrupted bytes)."""

    kind = "crc"


class VersionError(FrameError):
    """The header's protocol version is not ours (and the frame is not a HELLO)."""

    kind = "version"


class UnknownTypeError(FrameError):
    """The header's message type is not defined."""

    kind = "type"


class PayloadLengthError(FrameError):
    """The payload length does not match the message type's definition."""

    kind = "length"


FRAME_ERROR_KINDS: tuple[str, ...] = tuple(
    cls.kind
    for cls in (
        CobsError,
        FrameTooShortError,
        FrameTooLongError,
        CrcError,
        VersionError,
        UnknownTypeError,
        PayloadLengthError,
    )
)


# -- handshake ---------------------------------------------------------------------------------


class HandshakeError(ProtocolError):
    """The peer's HELLO shows another protocol version, schema hash or role; fail closed."""


# -- links -------------------------------------------------------------------------------------


class TransportUrlError(ProtocolError, ValueError):
    """A transport URL has an unknown scheme or bad options."""


class LinkError(ProtocolError):
    """The transport (serial device, pty, loop) failed."""


class LinkLost(LinkError):
    """The link went away (cable unplugged, pty master closed, peer closed). Reopen the URL."""


class LinkUnavailable(LinkError):
    """The link cannot be opened now (no such device yet, permission, busy). Retry later."""


class LinkBusy(LinkUnavailable):
    """Another process holds the port's exclusive lock (another controller on the same orthosis)."""


class LinkTimeout(LinkError, builtins.TimeoutError):
    """A write or a wait did not complete in time."""


class TransportClosedError(LinkError):
    """The transport was used after :meth:`close`."""
