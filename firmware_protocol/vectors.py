"""Golden test vectors for the firmware team: message, fields and the exact bytes on the wire.

    python -m firmware_protocol.vectors            # print the JSON
    python -m firmware_protocol.vectors --write    # rewrite firmware_protocol/vectors.json
    python -m firmware_protocol.vectors --check    # exit 1 if the file is out of date

The file is generated from the codec; the test suite checks that it is up to date and that every
vector decodes to its fields. Hex strings are lower case, without separators.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from firmware_protocol import cobs
from firmware_protocol.codec import MAX_ENCODED, MAX_WIRE, MIN_FRAME, Decoder, encode, pack
from firmware_protocol.crc import CRC_CHECK, crc16
from firmware_protocol.device import Device
from firmware_protocol.errors import FRAME_ERROR_KINDS
from firmware_protocol.handshake import host_hello
from firmware_protocol.messages import (
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
    fault_bit,
)

VECTORS_PATH = Path(__file__).with_name("vectors.json")
GENERATED_BY = "python -m firmware_protocol.vectors --write"

_OPEN = int(Intent.OPEN)
_SESSION_MOVING = int(StatusFlag.SESSION | StatusFlag.MOVING)


def _messages() -> list[tuple[str, Message, str]]:
    """(name, message, note) for every message type and its edge values."""
    h = host_hello()
    return [
        ("hello_host", h, "host HELLO sent on connect (watchdog_ms and max_ttl_ms are 0)"),
        (
            "hello_device",
            Hello(PROTOCOL_VERSION, int(Role.DEVICE), SCHEMA_HASH, 1, 2, 3, 200, 1000, seq=0),
            "device HELLO at boot / in reply to a HELLO",
        ),
        (
            "hello_host_mismatch",
            Hello(PROTOCOL_VERSION, int(Role.HOST), 0x12345678, seq=1),
            "a host with other definitions: the device replies HELLO and FAULT SCHEMA_MISMATCH",
        ),
        (
            "hello_max",
            Hello(0xFF, 0xFF, 0xFFFFFFFF, 0xFF, 0xFF, 0xFF, 0xFFFF, 0xFFFF, seq=0xFFFF),
            "all fields at their maximum (a mismatching HELLO)",
        ),
        ("heartbeat_zero", Heartbeat(0, seq=0), "all-zero header fields and payload: COBS at work"),
        ("heartbeat_max", Heartbeat(0xFFFFFFFF, seq=0xFFFF), "uptime and seq at their maximum"),
        ("heartbeat_typical", Heartbeat(123456, seq=42), ""),
        ("command_relax", Command(int(Intent.RELAX), 500, seq=1), ""),
        ("command_open", Command(_OPEN, 500, seq=2), ""),
        ("command_close", Command(int(Intent.CLOSE), 500, seq=3), ""),
        ("command_ttl_min", Command(_OPEN, 1, seq=4), "smallest valid TTL"),
        ("command_ttl_max", Command(_OPEN, 1000, seq=5), "largest valid TTL (max_ttl_ms=1000)"),
        ("command_ttl_zero", Command(_OPEN, 0, seq=6), "TTL 0 must be rejected"),
        ("command_ttl_over", Command(_OPEN, 1001, seq=7), "TTL above max_ttl_ms must be rejected"),
        ("command_ttl_u16_max", Command(_OPEN, 0xFFFF, seq=8), "TTL 65535 must be rejected"),
        ("command_intent_3", Command(3, 500, seq=9), "unknown intent must be rejected"),
        ("command_intent_255", Command(0xFF, 500, seq=10), "unknown intent must be rejected"),
        ("command_seq_max", Command(int(Intent.CLOSE), 300, seq=0xFFFF), "seq 65535 (the next is 0)"),
        ("command_seq_zero", Command(int(Intent.RELAX), 300, seq=0), "seq 0 and zero bytes"),
        ("stop", Stop(int(StopReason.UNSPECIFIED), seq=11), ""),
        ("stop_operator", Stop(int(StopReason.OPERATOR), seq=12), ""),
        ("stop_unknown_reason", Stop(0xFF, seq=13), "any reason value is accepted"),
        ("clear", Clear(seq=14), "empty payload"),
        ("ack_command_ok", Ack(2, Command.TYPE, int(Result.OK), int(State.OPEN), seq=3), ""),
        ("ack_command_rejected_fault", Ack(15, Command.TYPE, int(Result.REJECT_FAULT), int(State.FAULT), seq=4), ""),
        ("ack_command_rejected_ttl", Ack(6, Command.TYPE, int(Result.REJECT_TTL), int(State.SAFE), seq=5), ""),
        ("ack_stop", Ack(11, Stop.TYPE, int(Result.OK), int(State.SAFE), seq=6), ""),
        ("ack_clear_fault_active", Ack(14, Clear.TYPE, int(Result.REJECT_FAULT_ACTIVE), int(State.FAULT), seq=7), ""),
        ("ack_max", Ack(0xFFFF, 0xFF, 0xFF, 0xFF, seq=0xFFFF), ""),
        ("status_safe_idle", Status(int(State.SAFE), 0, 500, 0, 0, 0, 0, 0, seq=0), "just booted"),
        (
            "status_opening",
            Status(int(State.OPEN), _SESSION_MOVING, 250, 0, 12345, 2, 480, 3, seq=100),
            "opening under command seq 2, 480 ms of TTL left",
        ),
        (
            "status_fault",
            Status(
                int(State.FAULT),
                int(StatusFlag.SESSION),
                500,
                fault_bit(FaultCode.OVERCURRENT) | fault_bit(FaultCode.STALL),
                99000,
                7,
                0,
                0,
                seq=200,
            ),
            "latched faults overcurrent and stall",
        ),
        ("status_max", Status(0xFF, 0xFF, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFF, 0xFFFF, 0xFFFF, seq=0xFFFF), ""),
        ("fault_overcurrent", Fault(int(FaultCode.OVERCURRENT), fault_bit(FaultCode.OVERCURRENT), 1500, seq=8), ""),
        (
            "fault_schema_mismatch",
            Fault(int(FaultCode.SCHEMA_MISMATCH), fault_bit(FaultCode.SCHEMA_MISMATCH), 0x12345678, seq=9),
            "detail = the host's schema hash",
        ),
        ("fault_max", Fault(0xFF, 0xFFFF, 0xFFFFFFFF, seq=0xFFFF), ""),
    ]


def _device_reaction(msg: Message) -> dict | None:
    """What a device in session, in SAFE, with no previous command, answers to ``msg``."""
    if msg.DIRECTION == "to_host" or isinstance(msg, Heartbeat):
        return None
    if isinstance(msg, Hello) and msg.role != Role.HOST:
        return None  # a device's HELLO: a device receiving it ignores it
    device = Device()
    device.boot(0.0)
    if not isinstance(msg, Hello):
        device.receive(host_hello(seq=0xFFF0), 0.0)
    replies = device.receive(msg, 0.001)
    acks = [r for r in replies if isinstance(r, Ack)]
    faults = [r for r in replies if isinstance(r, Fault)]
    reaction: dict[str, str | list[str]] = {"state": State(device.state).name.lower()}
    if acks:
        reaction["result"] = Result(acks[0].result).name.lower()
    if isinstance(msg, Hello):
        reaction["replies"] = [r.NAME for r in replies]
        if faults:
            reaction["fault"] = FaultCode(faults[0].code).name.lower()
    return reaction


def _frame_vector(name: str, msg: Message, note: str) -> dict:
    frame = pack(msg)
    vector = {
        "name": name,
        "message": msg.NAME,
        "type": msg.TYPE,
        "seq": msg.seq,
        "fields": msg.fields(),
        "payload": msg.payload().hex(),
        "crc": f"0x{int.from_bytes(frame[-2:], 'big'):04x}",
        "frame": frame.hex(),
        "wire": encode(msg).hex(),
    }
    reaction = _device_reaction(msg)
    if reaction is not None:
        vector["device_reaction"] = reaction
    if note:
        vector["note"] = note
    return vector


def _wire(frame: bytes) -> bytes:
    return b"\x00" + cobs.encode(frame) + b"\x00"


def _with_crc(body: bytes, big_endian: bool = True) -> bytes:
    return body + crc16(body).to_bytes(2, "big" if big_endian else "little")


def _invalid() -> list[dict]:
    good = pack(Command(_OPEN, 500, seq=2))
    flipped = bytearray(good)
    flipped[5] ^= 0x01
    hello_body = pack(host_hello())[:-2]
    version_2 = bytes.fromhex("02 02 05 00 00 00 00 00")
    cases = [
        ("crc_bit_flip", _wire(bytes(flipped)), "crc", "command_open with one payload bit flipped"),
        (
            "crc_little_endian",
            _wire(_with_crc(good[:-2], big_endian=False)),
            "crc",
            "CRC appended in the wrong byte order",
        ),
        ("cobs_overrun", bytes.fromhex("00 05 11 22 00"), "cobs", "COBS code points past the delimiter"),
        ("truncated_wire", encode(Command(_OPEN, 500, seq=2))[:-4] + b"\x00", "cobs", "last bytes of a frame lost"),
        ("too_short", _wire(bytes.fromhex("01 02 00")), "too_short", f"fewer than {MIN_FRAME} bytes after COBS"),
        (
            "too_long",
            b"\x00" + b"\x11" * (MAX_ENCODED + 1) + b"\x00",
            "too_long",
            f"more than {MAX_ENCODED} bytes between delimiters",
        ),
        ("unknown_type", _wire(_with_crc(bytes.fromhex("01 7f 01 00"))), "type", "type 0x7f is not defined"),
        ("payload_too_long", _wire(_with_crc(good[:-2] + b"\x00")), "length", "COMMAND with a 4-byte payload"),
        ("payload_too_short", _wire(_with_crc(good[:-3])), "length", "COMMAND with a 2-byte payload"),
        ("version_2_heartbeat", _wire(_with_crc(version_2)), "version", "non-HELLO frame of another protocol version"),
        ("hello_truncated", _wire(_with_crc(hello_body[:-1])), "length", "HELLO shorter than its 13 frozen bytes"),
    ]
    out = []
    for name, wire, kind, note in cases:
        assert kind in FRAME_ERROR_KINDS
        out.append({"name": name, "wire": wire.hex(), "error": kind, "note": note})
    return out


def _compat() -> list[dict]:
    """Frames of a future protocol version that must still be identified (HELLO is frozen)."""
    payload = Hello(2, int(Role.DEVICE), 0xCAFEF00D, 2, 0, 0, 150, 800).payload() + bytes.fromhex("aa bb cc")
    frame = _with_crc(bytes([2, Hello.TYPE, 0x07, 0x00]) + payload)
    fields = Hello(2, int(Role.DEVICE), 0xCAFEF00D, 2, 0, 0, 150, 800).fields()
    return [
        {
            "name": "hello_version_2_longer",
            "message": "HELLO",
            "seq": 7,
            "fields": fields,
            "wire": _wire(frame).hex(),
            "note": "a version-2 device HELLO with 3 extra payload bytes: decode the frozen 13 bytes, "
            "then fail the handshake (protocol_version 2 != 1)",
        }
    ]


def _stream() -> dict:
    """A byte stream mixing noise, invalid and valid frames; delimiters resynchronise."""
    parts = [
        bytes.fromhex("13 37 42"),  # line noise before the first delimiter
        encode(Heartbeat(1000, seq=1)),
        b"\x00\x00\x00",  # empty frames are no errors
        encode(Command(_OPEN, 500, seq=2))[:-5],  # cut short, the next delimiter ends it
        encode(Command(int(Intent.CLOSE), 400, seq=3)),
        b"\x11" * 80,  # oversized garbage
        encode(Stop(0, seq=4)),
    ]
    data = b"".join(parts)
    decoder = Decoder()
    msgs = decoder.feed(data)
    return {
        "wire": data.hex(),
        "messages": [{"message": m.NAME, "seq": m.seq, "fields": m.fields()} for m in msgs],
        "errors": {k: v for k, v in decoder.errors.items() if v},
        "note": "feed in any chunking: the same messages and error counts result",
    }


def generate() -> dict:
    """The whole vector document (deterministic)."""
    cobs_cases = [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x11\x22\x00\x33",
        b"\x11\x22\x33\x44",
        b"\x11\x00\x00\x00",
        bytes(range(1, 255)),
        bytes(range(255)),
        bytes(range(1, 256)) + b"\x00",
    ]
    return {
        "description": "MyHand orthosis serial protocol: golden vectors (see docs/firmware_protocol.md)",
        "generated_by": GENERATED_BY,
        "protocol_version": PROTOCOL_VERSION,
        "schema_hash": f"0x{SCHEMA_HASH:08x}",
        "schema_text": SCHEMA_TEXT,
        "limits": {"min_frame": MIN_FRAME, "max_frame": MAX_FRAME, "max_encoded": MAX_ENCODED, "max_wire": MAX_WIRE},
        "message_types": {cls.NAME: cls.TYPE for cls in MESSAGES.values()},
        "crc16": {
            "algorithm": "CRC-16/CCITT-FALSE",
            "poly": "0x1021",
            "init": "0xffff",
            "refin": False,
            "refout": False,
            "xorout": "0x0000",
            "check_input": "123456789",
            "check": f"0x{CRC_CHECK:04x}",
        },
        "cobs": [{"data": d.hex(), "encoded": cobs.encode(d).hex()} for d in cobs_cases],
        "frames": [_frame_vector(n, m, note) for n, m, note in _messages()],
        "compat": _compat(),
        "invalid": _invalid(),
        "stream": _stream(),
    }


def render() -> str:
    return json.dumps(generate(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware_protocol.vectors", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"rewrite {VECTORS_PATH.name}")
    group.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        from metaemg.atomic import write_text

        write_text(VECTORS_PATH, text)
        print(f"wrote {VECTORS_PATH}")
        return 0
    if args.check:
        current = VECTORS_PATH.read_text(encoding="utf-8") if VECTORS_PATH.exists() else ""
        if current != text:
            print(f"{VECTORS_PATH} is out of date: run {GENERATED_BY}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
