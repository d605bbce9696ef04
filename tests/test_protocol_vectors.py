"""The golden vectors shipped to the firmware team are up to date and decode as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from firmware_protocol import MESSAGES, SCHEMA_HASH, SCHEMA_TEXT, Decoder, FrameError, cobs, decode, encode, pack
from firmware_protocol.crc import crc16
from firmware_protocol.vectors import VECTORS_PATH, generate, render

VECTORS = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


def test_file_is_what_the_codec_generates():
    assert VECTORS_PATH.read_text(encoding="utf-8") == render(), (
        "vectors.json is out of date: run python -m firmware_protocol.vectors --write"
    )
    assert generate() == VECTORS


def test_check_command_reports_up_to_date():
    result = subprocess.run(
        [sys.executable, "-m", "firmware_protocol.vectors", "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_message_type_is_covered():
    covered = {v["message"] for v in VECTORS["frames"]}
    assert covered == {cls.NAME for cls in MESSAGES.values()}
    assert VECTORS["schema_hash"] == f"0x{SCHEMA_HASH:08x}"
    assert VECTORS["crc16"]["check"] == "0x29b1" and crc16(b"123456789") == 0x29B1


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: v["name"])
def test_frame_vector(vector):
    cls = MESSAGES[vector["type"]]
    msg = cls(**vector["fields"], seq=vector["seq"])
    wire = bytes.fromhex(vector["wire"])
    frame = bytes.fromhex(vector["frame"])
    assert encode(msg) == wire
    assert pack(msg) == frame
    assert decode(wire) == msg
    assert wire == b"\x00" + cobs.encode(frame) + b"\x00"
    assert frame[:4] == bytes([1, vector["type"], vector["seq"] & 0xFF, vector["seq"] >> 8])
    assert frame[4:-2].hex() == vector["payload"]
    assert int(vector["crc"], 16) == crc16(frame[:-2]) == int.from_bytes(frame[-2:], "big")


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector(vector):
    wire = bytes.fromhex(vector["wire"])
    with pytest.raises(FrameError) as info:
        decode(wire)
    assert info.value.kind == vector["error"]
    decoder = Decoder()
    assert decoder.feed(wire) == []
    assert decoder.errors[vector["error"]] == 1 and decoder.error_count == 1


def test_compat_vectors_decode_the_frozen_hello():
    for vector in VECTORS["compat"]:
        msg = decode(bytes.fromhex(vector["wire"]))
        assert vector["message"] == msg.NAME and msg.seq == vector["seq"]
        assert msg.fields() == vector["fields"]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_stream_vector_in_any_chunking(chunk):
    stream = VECTORS["stream"]
    data = bytes.fromhex(stream["wire"])
    decoder = Decoder()
    msgs = [m for i in range(0, len(data), chunk) for m in decoder.feed(data[i : i + chunk])]
    assert [{"message": m.NAME, "seq": m.seq, "fields": m.fields()} for m in msgs] == stream["messages"]
    assert {k: v for k, v in decoder.errors.items() if v} == stream["errors"]
    assert len(msgs) == 3 and decoder.error_count >= 3


def test_cobs_vectors():
    for case in VECTORS["cobs"]:
        data, enc = bytes.fromhex(case["data"]), bytes.fromhex(case["encoded"])
        assert cobs.encode(data) == enc and cobs.decode(enc) == data


def test_command_vectors_state_the_device_reaction():
    reactions = {v["name"]: v["device_reaction"] for v in VECTORS["frames"] if "device_reaction" in v}
    assert reactions["command_open"] == {"state": "open", "result": "ok"}
    assert reactions["command_ttl_zero"]["result"] == "reject_ttl"
    assert reactions["command_intent_255"]["result"] == "reject_intent"
    assert reactions["hello_host_mismatch"] == {
        "state": "fault",
        "replies": ["HELLO", "FAULT"],
        "fault": "schema_mismatch",
    }
    assert reactions["stop_unknown_reason"] == {"state": "safe", "result": "ok"}


def test_spec_document_quotes_the_current_schema_and_examples():
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[1] / "docs" / "firmware_protocol.md").read_text(encoding="utf-8")
    assert "```\n" + SCHEMA_TEXT + "```\n" in spec  # the canonical text, verbatim
    assert f"0x{SCHEMA_HASH:08X}" in spec
    spaced = {v["name"]: " ".join(v["wire"][i : i + 2] for i in range(0, len(v["wire"]), 2)) for v in VECTORS["frames"]}
    for name in ("command_open", "ack_command_ok", "heartbeat_zero", "hello_host", "status_opening", "stop", "clear"):
        assert spaced[name] in spec, name
    for vector in VECTORS["invalid"]:
        wire = " ".join(vector["wire"][i : i + 2] for i in range(0, len(vector["wire"]), 2))
        if f"| {vector['name']} |" in spec:
            assert f"`{wire}`" in spec, vector["name"]
