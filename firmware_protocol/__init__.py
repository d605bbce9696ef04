"""MyHand orthosis serial protocol: codec, transports, handshake and a device simulator.

The wire format and the firmware semantics are specified in ``docs/firmware_protocol.md``;
``firmware_protocol/vectors.json`` holds the golden vectors. Typical host use::

    from firmware_protocol import Decoder, encode, open_transport, host_hello, check_reply

    link = open_transport("/dev/myhand")
    link.write(encode(host_hello(seq=0)))
    decoder = Decoder()
    for msg in decoder.feed(link.read(timeout=0.1)):
        ...
"""

from firmware_protocol.codec import MAX_ENCODED, MAX_WIRE, MIN_FRAME, Decoder, decode, encode, pack, unpack
from firmware_protocol.errors import (
    FRAME_ERROR_KINDS,
    CobsError,
    CrcError,
    FrameError,
    FrameTooLongError,
    FrameTooShortError,
    HandshakeError,
    LinkError,
    LinkLost,
    LinkTimeout,
    LinkUnavailable,
    MessageValueError,
    PayloadLengthError,
    ProtocolError,
    TransportClosedError,
    TransportUrlError,
    UnknownTypeError,
    VersionError,
)
from firmware_protocol.handshake import check_hello, check_reply, host_hello
from firmware_protocol.messages import (
    DEFAULT_MAX_TTL_MS,
    DEFAULT_WATCHDOG_MS,
    MAX_FRAME,
    MESSAGES,
    PROTOCOL_VERSION,
    SCHEMA_HASH,
    SCHEMA_TEXT,
    Ack,
    Clear,
    Command,
    Fault,
    FaultCode,
    Heartbeat,
    Hello,
    Intent,
    Message,
    Result,
    Role,
    State,
    Status,
    StatusFlag,
    Stop,
    StopReason,
    make_command,
)
from firmware_protocol.transport import LoopTransport, PtyTransport, SerialTransport, Transport, open_transport

__all__ = [
    "DEFAULT_MAX_TTL_MS",
    "DEFAULT_WATCHDOG_MS",
    "FRAME_ERROR_KINDS",
    "MAX_ENCODED",
    "MAX_FRAME",
    "MAX_WIRE",
    "MESSAGES",
    "MIN_FRAME",
    "PROTOCOL_VERSION",
    "SCHEMA_HASH",
    "SCHEMA_TEXT",
    "Ack",
    "Clear",
    "CobsError",
    "Command",
    "CrcError",
    "Decoder",
    "Fault",
    "FaultCode",
    "FrameError",
    "FrameTooLongError",
    "FrameTooShortError",
    "HandshakeError",
    "Heartbeat",
    "Hello",
    "Intent",
    "LinkError",
    "LinkLost",
    "LinkTimeout",
    "LinkUnavailable",
    "LoopTransport",
    "Message",
    "MessageValueError",
    "PayloadLengthError",
    "ProtocolError",
    "PtyTransport",
    "Result",
    "Role",
    "SerialTransport",
    "State",
    "Status",
    "StatusFlag",
    "Stop",
    "StopReason",
    "Transport",
    "TransportClosedError",
    "TransportUrlError",
    "UnknownTypeError",
    "VersionError",
    "check_hello",
    "check_reply",
    "decode",
    "encode",
    "host_hello",
    "make_command",
    "open_transport",
    "pack",
    "unpack",
]
