"""The connect-time handshake, as pure functions (no I/O).

The host sends :func:`host_hello` after opening the link. The device answers every HELLO with its
own; if the host's definitions differ it also answers FAULT SCHEMA_MISMATCH and refuses commands
until a matching HELLO and a CLEAR. The host must check the device's HELLO with
:func:`check_reply` and send no COMMAND unless it passed: both ends fail closed.
"""

from __future__ import annotations

from firmware_protocol.errors import HandshakeError
from firmware_protocol.messages import (
    PROTOCOL_VERSION,
    SCHEMA_HASH,
    Fault,
    FaultCode,
    Hello,
    Message,
    Role,
    enum_name,
)

HOST_SW_VERSION = (0, 1, 0)


def host_hello(seq: int = 0, sw_version: tuple[int, int, int] = HOST_SW_VERSION) -> Hello:
    """The HELLO a host sends: our protocol version and schema hash."""
    major, minor, patch = sw_version
    return Hello(
        protocol_version=PROTOCOL_VERSION,
        role=int(Role.HOST),
        schema_hash=SCHEMA_HASH,
        sw_major=major,
        sw_minor=minor,
        sw_patch=patch,
        seq=seq,
    )


def check_hello(
    hello: Hello,
    *,
    role: Role = Role.DEVICE,
    protocol_version: int = PROTOCOL_VERSION,
    schema_hash: int = SCHEMA_HASH,
) -> Hello:
    """Return ``hello`` if it comes from ``role`` with our version and schema; else raise
    :class:`HandshakeError` naming what differs."""
    problems = []
    if hello.role != role:
        problems.append(f"role {enum_name(Role, hello.role)}, expected {role.name.lower()}")
    if hello.protocol_version != protocol_version:
        problems.append(f"protocol version {hello.protocol_version}, expected {protocol_version}")
    if hello.schema_hash != schema_hash:
        problems.append(f"schema hash 0x{hello.schema_hash:08x}, expected 0x{schema_hash:08x}")
    if problems:
        raise HandshakeError("peer HELLO mismatch: " + "; ".join(problems))
    return hello


def check_reply(msg: Message) -> Hello | None:
    """Check one message received while waiting for the device's HELLO.

    Returns the device HELLO when it matches, None for unrelated messages (STATUS, HEARTBEAT,
    ...), and raises :class:`HandshakeError` on a mismatching HELLO or a SCHEMA_MISMATCH fault.
    """
    if isinstance(msg, Hello):
        if msg.role == Role.HOST:
            return None  # our own HELLO echoed back; not an answer
        return check_hello(msg)
    if isinstance(msg, Fault) and msg.code == FaultCode.SCHEMA_MISMATCH:
        raise HandshakeError("device refused our HELLO: schema mismatch (fault latched)")
    return None
