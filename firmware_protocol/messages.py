"""Message definitions: type codes, field layouts, enumerations and the schema hash.

Every message is a frozen dataclass whose fields are plain integers that must fit their wire
type (u8/u16/u32); ``seq`` is the frame header's sequence number. Semantic checks (is this intent
known, is this TTL allowed in this state) belong to the receiver, which must be able to reject an
out-of-range command with a reason, so the codec carries any value that fits the wire type. Use
:func:`make_command` on the host to build commands that are valid by construction.

The schema hash is derived from :func:`schema_text`, a canonical text of the header layout, every
message layout and every enumeration; both ends exchange it in HELLO and refuse to work together
when it differs (as MAVLink's CRC_EXTRA does per message, here for the whole protocol).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from firmware_protocol.errors import MessageValueError

PROTOCOL_VERSION = 1
HEADER_SIZE = 4  # version u8, type u8, seq u16 LE
CRC_SIZE = 2
MAX_PAYLOAD = 58
MAX_FRAME = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE  # 64 bytes before COBS
DEFAULT_WATCHDOG_MS = 200
DEFAULT_MAX_TTL_MS = 1000

_WIRE = {"u8": ("B", 0xFF), "u16": ("H", 0xFFFF), "u32": ("I", 0xFFFFFFFF)}


# -- enumerations (their values are part of the schema hash) ----------------------------------


class Role(enum.IntEnum):
    """Who sent a HELLO."""

    HOST = 0
    DEVICE = 1


class Intent(enum.IntEnum):
    """Target of a COMMAND; same numbering as the dataset labels."""

    RELAX = 0
    OPEN = 1
    CLOSE = 2


class State(enum.IntEnum):
    """Device state. SAFE is 0 so that zeroed memory means safe. Not equal to Intent numbers."""

    SAFE = 0
    RELAX = 1
    OPEN = 2
    CLOSE = 3
    FAULT = 4


class Result(enum.IntEnum):
    """ACK result: OK or the reason a request was refused."""

    OK = 0
    REJECT_FAULT = 1  # device is latched in FAULT: only STOP, CLEAR, HELLO, HEARTBEAT
    REJECT_NO_SESSION = 2  # no matching HELLO since boot
    REJECT_INTENT = 3  # intent not in Intent
    REJECT_TTL = 4  # ttl_ms == 0 or > max_ttl_ms
    REJECT_SEQ = 5  # seq not newer than the last accepted COMMAND (exact duplicates excepted)
    REJECT_FAULT_ACTIVE = 6  # CLEAR while the fault condition is still present


class FaultCode(enum.IntEnum):
    """Fault codes; fault_flags has bit (code - 1) set for each latched fault."""

    OVERCURRENT = 1
    POSITION_SENSOR = 2
    MOTOR_DRIVER = 3
    OVERTEMPERATURE = 4
    UNDERVOLTAGE = 5
    SCHEMA_MISMATCH = 6  # a host HELLO with another protocol version or schema hash
    INTERNAL = 7  # firmware self-check failed, hardware watchdog reset, ...
    STALL = 8  # actuator did not reach its target in time


class StopReason(enum.IntEnum):
    """Why the host sent STOP (informational; every value is accepted)."""

    UNSPECIFIED = 0
    OPERATOR = 1
    HOST_SHUTDOWN = 2
    HOST_ERROR = 3
    SIGNAL_LOST = 4


class StatusFlag(enum.IntFlag):
    """Bits of STATUS.flags."""

    SESSION = 0x01  # a matching HELLO was received since boot
    MOVING = 0x02  # the actuator is being driven


ENUMS: tuple[type[enum.IntEnum] | type[enum.IntFlag], ...] = (
    Role,
    Intent,
    State,
    Result,
    FaultCode,
    StopReason,
    StatusFlag,
)


def fault_bit(code: int) -> int:
    """The fault_flags bit of a fault code."""
    return 1 << (int(code) - 1)


def fault_names(flags: int) -> list[str]:
    """Names of the fault codes set in ``flags`` (unknown bits as ``bitN``)."""
    names = []
    for bit in range(16):
        if flags & (1 << bit):
            try:
                names.append(FaultCode(bit + 1).name.lower())
            except ValueError:
                names.append(f"bit{bit}")
    return names


def enum_name(enum_cls: type[enum.IntEnum], value: int) -> str:
    """Lower-case name of ``value`` in ``enum_cls``, or ``"unknown(N)"``."""
    try:
        return enum_cls(value).name.lower()
    except ValueError:
        return f"unknown({value})"


# -- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all messages. Subclasses declare TYPE, NAME, DIRECTION and FIELDS."""

    TYPE: ClassVar[int]
    NAME: ClassVar[str]
    DIRECTION: ClassVar[str]  # "both", "to_device", "to_host"
    FIELDS: ClassVar[tuple[tuple[str, str], ...]]
    STRUCT: ClassVar[struct.Struct]

    if TYPE_CHECKING:
        # Every subclass declares ``seq: int = 0`` as its last field (declared here it would be the
        # first field of every generated __init__). These stubs tell the type checker what all
        # messages share: a ``seq`` and a constructor taking the payload fields and ``seq``.
        def __init__(self, *fields: int, seq: int = 0, **named_fields: int) -> None: ...

        @property
        def seq(self) -> int: ...

    def __post_init__(self) -> None:
        for name, wire in (*self.FIELDS, ("seq", "u16")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise MessageValueError(f"{self.NAME}.{name} must be an int, got {value!r}")
            limit = _WIRE[wire][1]
            if not 0 <= value <= limit:
                raise MessageValueError(f"{self.NAME}.{name}={value} does not fit {wire}")

    def fields(self) -> dict[str, int]:
        """Payload fields by name (without ``seq``), in wire order."""
        return {name: int(getattr(self, name)) for name, _ in self.FIELDS}

    def payload(self) -> bytes:
        return self.STRUCT.pack(*(getattr(self, name) for name, _ in self.FIELDS))


MESSAGES: dict[int, type[Message]] = {}


def _register(type_code: int, name: str, direction: str):
    def wrap(cls: type[Message]) -> type[Message]:
        field_names = [f.name for f in dataclasses.fields(cls) if f.name != "seq"]
        declared = [n for n, _ in cls.FIELDS]
        if field_names != declared:  # pragma: no cover - definition error
            raise TypeError(f"{cls.__name__}: dataclass fields {field_names} != FIELDS {declared}")
        if type_code in MESSAGES:  # pragma: no cover - definition error
            raise TypeError(f"duplicate message type 0x{type_code:02x}")
        cls.TYPE, cls.NAME, cls.DIRECTION = type_code, name, direction
        cls.STRUCT = struct.Struct("<" + "".join(_WIRE[w][0] for _, w in cls.FIELDS))
        if cls.STRUCT.size > MAX_PAYLOAD:  # pragma: no cover - definition error
            raise TypeError(f"{name}: payload {cls.STRUCT.size} > {MAX_PAYLOAD}")
        MESSAGES[type_code] = cls
        return cls

    return wrap


@_register(0x01, "HELLO", "both")
@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Identity and definitions, sent by the host on connect and by the device at boot and in
    reply to every HELLO. Type code, header and these 13 payload bytes are frozen for all
    protocol versions, so two versions can always detect each other."""

    FIELDS = (
        ("protocol_version", "u8"),
        ("role", "u8"),
        ("schema_hash", "u32"),
        ("sw_major", "u8"),
        ("sw_minor", "u8"),
        ("sw_patch", "u8"),
        ("watchdog_ms", "u16"),
        ("max_ttl_ms", "u16"),
    )
    protocol_version: int
    role: int
    schema_hash: int
    sw_major: int = 0
    sw_minor: int = 0
    sw_patch: int = 0
    watchdog_ms: int = 0
    max_ttl_ms: int = 0
    seq: int = 0


@_register(0x02, "HEARTBEAT", "both")
@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Liveness. From the host it feeds the device watchdog; from the device it is sent only by
    a healthy main loop. ``uptime_ms`` is the sender's clock (wraps at 2**32)."""

    FIELDS = (("uptime_ms", "u32"),)
    uptime_ms: int = 0
    seq: int = 0


@_register(0x10, "COMMAND", "to_device")
@dataclass(frozen=True, slots=True)
class Command(Message):
    """Target intent, valid for ``ttl_ms`` from reception. Idempotent: it states a target, it
    does not step; a repeated frame (same seq) changes nothing."""

    FIELDS = (("intent", "u8"), ("ttl_ms", "u16"))
    intent: int
    ttl_ms: int
    seq: int = 0


@_register(0x11, "STOP", "to_device")
@dataclass(frozen=True, slots=True)
class Stop(Message):
    """Go to the safe state now. Always accepted."""

    FIELDS = (("reason", "u8"),)
    reason: int = 0
    seq: int = 0


@_register(0x12, "CLEAR", "to_device")
@dataclass(frozen=True, slots=True)
class Clear(Message):
    """Leave a latched fault (to SAFE). Has no effect outside FAULT."""

    FIELDS = ()
    seq: int = 0


@_register(0x20, "ACK", "to_host")
@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Reply to COMMAND, STOP and CLEAR: which frame, the result, the state after it."""

    FIELDS = (("acked_seq", "u16"), ("acked_type", "u8"), ("result", "u8"), ("state", "u8"))
    acked_seq: int
    acked_type: int
    result: int
    state: int
    seq: int = 0


@_register(0x21, "STATUS", "to_host")
@dataclass(frozen=True, slots=True)
class Status(Message):
    """Periodic telemetry from a healthy device loop."""

    FIELDS = (
        ("state", "u8"),
        ("flags", "u8"),
        ("position", "u16"),
        ("fault_flags", "u16"),
        ("uptime_ms", "u32"),
        ("last_command_seq", "u16"),
        ("ttl_left_ms", "u16"),
        ("rx_errors", "u16"),
    )
    state: int
    flags: int = 0
    position: int = 0  # permille of travel: 0 fully open (extended) .. 1000 fully closed
    fault_flags: int = 0
    uptime_ms: int = 0
    last_command_seq: int = 0
    ttl_left_ms: int = 0
    rx_errors: int = 0
    seq: int = 0


@_register(0x22, "FAULT", "to_host")
@dataclass(frozen=True, slots=True)
class Fault(Message):
    """A fault was raised; the device is now latched in FAULT."""

    FIELDS = (("code", "u8"), ("fault_flags", "u16"), ("detail", "u32"))
    code: int
    fault_flags: int = 0
    detail: int = 0
    seq: int = 0


HELLO_FROZEN_SIZE = Hello.STRUCT.size  # 13


def make_command(intent: Intent | int, ttl_ms: int, seq: int, *, max_ttl_ms: int = DEFAULT_MAX_TTL_MS) -> Command:
    """A COMMAND that a device will accept on range grounds; raise MessageValueError otherwise."""
    try:
        intent = Intent(intent)
    except ValueError:
        raise MessageValueError(f"COMMAND.intent={intent!r} is not an Intent") from None
    if not 1 <= ttl_ms <= max_ttl_ms:
        raise MessageValueError(f"COMMAND.ttl_ms={ttl_ms} outside 1..{max_ttl_ms}")
    return Command(intent=int(intent), ttl_ms=ttl_ms, seq=seq)


# -- schema hash -------------------------------------------------------------------------------


def schema_text() -> str:
    """The canonical text the schema hash is computed from (ASCII, LF line ends).

    Line 1: ``myhand-protocol <version>``; line 2: ``header version:u8 type:u8 seq:u16 crc:u16be``;
    then one line per message in type order: ``message 0x<TT> <NAME> <field>:<type> ...``; then
    one line per enumeration in the order of :data:`ENUMS`: ``enum <Name> <NAME>=<value> ...`` in
    value order. Every line ends with ``\\n``.
    """
    lines = [
        f"myhand-protocol {PROTOCOL_VERSION}",
        "header version:u8 type:u8 seq:u16 crc:u16be",
    ]
    for code in sorted(MESSAGES):
        cls = MESSAGES[code]
        fields = " ".join(f"{n}:{w}" for n, w in cls.FIELDS)
        lines.append(f"message 0x{code:02x} {cls.NAME} {fields}".rstrip())
    for enum_cls in ENUMS:
        members: list[tuple[str, enum.IntEnum | enum.IntFlag]] = sorted(
            enum_cls.__members__.items(), key=lambda kv: int(kv[1])
        )
        lines.append(f"enum {enum_cls.__name__} " + " ".join(f"{n}={int(v)}" for n, v in members))
    return "\n".join(lines) + "\n"


def compute_schema_hash(text: str) -> int:
    """First four bytes of SHA-256(text as ASCII), read big-endian."""
    return int.from_bytes(hashlib.sha256(text.encode("ascii")).digest()[:4], "big")


SCHEMA_TEXT = schema_text()
SCHEMA_HASH = compute_schema_hash(SCHEMA_TEXT)
