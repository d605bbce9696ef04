"""Codec properties: CRC, COBS, round trips, chunking invariance, corruption, fuzzing."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_protocol import (
    FRAME_ERROR_KINDS,
    MAX_ENCODED,
    MESSAGES,
    Command,
    CrcError,
    Decoder,
    FrameError,
    Hello,
    Intent,
    MessageValueError,
    PayloadLengthError,
    ProtocolError,
    Status,
    VersionError,
    cobs,
    decode,
    encode,
    make_command,
    pack,
    unpack,
)
from firmware_protocol.crc import CRC_CHECK, crc16, crc16_bitwise
from firmware_protocol.messages import SCHEMA_HASH, SCHEMA_TEXT, compute_schema_hash
from metaemg.errors import MetaEMGError

_LIMIT = {"u8": 0xFF, "u16": 0xFFFF, "u32": 0xFFFFFFFF}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def message_strategy(cls):
    fields = {name: st.integers(0, _LIMIT[wire]) for name, wire in cls.FIELDS}
    return st.builds(cls, **fields, seq=st.integers(0, 0xFFFF))


messages = st.sampled_from(sorted(MESSAGES.values(), key=lambda c: c.TYPE)).flatmap(message_strategy)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# -- CRC and COBS -----------------------------------------------------------------------------


def test_crc_check_value():
    assert crc16(b"123456789") == CRC_CHECK == 0x29B1
    assert crc16_bitwise(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


@given(st.binary(max_size=300))
@SETTINGS
def test_crc_matches_bitwise_reference(data):
    assert crc16(data) == crc16_bitwise(data)


@pytest.mark.parametrize(
    ("data", "encoded"),
    [
        (b"", b"\x01"),
        (b"\x00", b"\x01\x01"),
        (b"\x00\x00", b"\x01\x01\x01"),
        (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
        (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
        (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
        (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255)) + b"\x01"),
    ],
)
def test_cobs_reference_examples(data, encoded):
    assert cobs.encode(data) == encoded
    assert cobs.decode(encoded) == data


@given(st.binary(max_size=700))
@SETTINGS
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    enc = cobs.encode(data)
    assert 0 not in enc
    assert len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data


@pytest.mark.parametrize("bad", [b"", b"\x05\x11\x22", b"\x02\x00", b"\x03\x11"])
def test_cobs_rejects_invalid_blocks(bad):
    with pytest.raises(cobs.CobsError):
        cobs.decode(bad)


# -- messages and frames ------------------------------------------------------------------------


@given(messages)
@SETTINGS
def test_round_trip_every_message(msg):
    wire = encode(msg)
    assert wire[0] == 0 and wire[-1] == 0 and 0 not in wire[1:-1]
    assert len(wire) <= MAX_ENCODED + 2
    assert decode(wire) == msg
    assert unpack(pack(msg)) == msg
    assert Decoder().feed(wire) == [msg]


@given(st.lists(messages, min_size=1, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
@SETTINGS
def test_any_chunking_gives_the_same_messages(msgs, cuts):
    stream = b"".join(encode(m) for m in msgs)
    decoder = Decoder()
    out = [m for chunk in chunked(stream, cuts) for m in decoder.feed(chunk)]
    assert out == msgs
    assert decoder.error_count == 0 and decoder.pending == 0
    one_by_one = Decoder()
    assert [m for b in stream for m in one_by_one.feed(bytes([b]))] == msgs


@given(messages, st.data())
@SETTINGS
def test_crc_detects_every_burst_of_up_to_16_bits(msg, data):
    frame = bytearray(pack(msg))
    nbits = len(frame) * 8
    length = data.draw(st.integers(1, 16), label="burst length")
    start = data.draw(st.integers(0, nbits - length), label="burst start")
    pattern = data.draw(st.integers(0, (1 << length) - 1), label="pattern") | 1 | (1 << (length - 1))
    value = int.from_bytes(frame, "big") ^ (pattern << (nbits - start - length))
    corrupted = value.to_bytes(len(frame), "big")
    assert corrupted != bytes(frame)
    with pytest.raises(CrcError):
        unpack(corrupted)
    decoder = Decoder()
    assert decoder.feed(b"\x00" + cobs.encode(corrupted) + b"\x00") == []
    assert decoder.errors["crc"] == 1


@given(st.binary(max_size=200), st.lists(messages, min_size=1, max_size=5))
@SETTINGS
def test_decoder_resynchronises_after_garbage(garbage, msgs):
    decoder = Decoder()
    decoder.feed(garbage)
    out = decoder.feed(b"".join(encode(m) for m in msgs))
    assert out[-len(msgs) :] == msgs


@given(messages, st.integers(1, 200), st.data())
@SETTINGS
def test_truncated_frame_is_counted_and_the_next_one_decodes(msg, cut, data):
    wire = encode(msg)
    cut = min(cut, len(wire) - 3)  # keep at least one encoded byte
    nxt = data.draw(messages)
    decoder = Decoder()
    out = decoder.feed(wire[: -1 - cut] + encode(nxt))  # the tail of the first frame is lost
    assert out[-1] == nxt
    assert decoder.error_count == 1, decoder.errors


def test_oversized_input_is_one_error_then_resync():
    decoder = Decoder()
    msg = Command(1, 500, seq=9)
    assert decoder.feed(b"\x22" * 10_000) == []
    assert decoder.errors["too_long"] == 1 and decoder.pending == 0
    assert decoder.feed(encode(msg)) == [msg]
    assert decoder.error_count == 1


def test_error_kinds_are_typed_and_counted():
    seen = []
    decoder = Decoder(on_error=seen.append)
    good = pack(Command(1, 500, seq=2))
    bad_crc = bytearray(good)
    bad_crc[4] ^= 0xFF
    decoder.feed(b"\x00" + cobs.encode(bytes(bad_crc)) + b"\x00")
    decoder.feed(b"\x00\x05\x11\x00")
    assert decoder.errors["crc"] == 1 and decoder.errors["cobs"] == 1
    assert [type(e).__name__ for e in seen] == ["CrcError", "CobsError"]
    assert all(isinstance(e, FrameError) and isinstance(e, MetaEMGError) for e in seen)
    assert decoder.last_error is seen[-1]
    assert set(decoder.errors) == set(FRAME_ERROR_KINDS)


def test_other_protocol_version_is_refused_except_hello():
    from firmware_protocol.crc import crc16 as crc

    body = bytes([2, Command.TYPE, 1, 0]) + Command(1, 500).payload()
    with pytest.raises(VersionError):
        unpack(body + crc(body).to_bytes(2, "big"))
    hello = Hello(7, 1, 0xDEADBEEF, 1, 2, 3, 4, 5)
    body = bytes([7, Hello.TYPE, 3, 0]) + hello.payload() + b"\xaa\xbb"  # future, longer HELLO
    decoded = unpack(body + crc(body).to_bytes(2, "big"))
    assert decoded == Hello(7, 1, 0xDEADBEEF, 1, 2, 3, 4, 5, seq=3)
    short = bytes([1, Hello.TYPE, 3, 0]) + hello.payload()[:-1]
    with pytest.raises(PayloadLengthError):
        unpack(short + crc(short).to_bytes(2, "big"))


def test_fuzz_decoder_never_raises_and_is_chunking_invariant():
    rng = random.Random(1234)
    valid = [encode(Command(rng.randrange(3), rng.randrange(1, 1001), seq=i)) for i in range(50)]
    valid += [encode(Status(rng.randrange(5), position=rng.randrange(1001), seq=i)) for i in range(50)]
    for _ in range(300):
        parts = []
        for _ in range(rng.randrange(1, 12)):
            kind = rng.random()
            if kind < 0.4:
                parts.append(rng.choice(valid))
            elif kind < 0.7:  # a valid frame with random byte damage
                frame = bytearray(rng.choice(valid))
                for _ in range(rng.randrange(1, 4)):
                    op = rng.randrange(3)
                    i = rng.randrange(len(frame))
                    if op == 0:
                        frame[i] = rng.randrange(256)
                    elif op == 1 and len(frame) > 1:
                        del frame[i]
                    else:
                        frame.insert(i, rng.randrange(256))
                parts.append(bytes(frame))
            else:
                parts.append(rng.randbytes(rng.randrange(0, 150)))
        stream = b"".join(parts)
        whole = Decoder()
        expected = whole.feed(stream)
        pieces = Decoder()
        got = []
        i = 0
        while i < len(stream):
            n = rng.randrange(1, 40)
            got += pieces.feed(stream[i : i + n])
            i += n
        assert got == expected
        assert pieces.errors == whole.errors
        assert whole.frames == len(expected)


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_fuzz_arbitrary_bytes(data):
    decoder = Decoder()
    out = decoder.feed(data)
    assert decoder.frames == len(out)
    assert decoder.error_count <= data.count(0) + 1 + len(data) // MAX_ENCODED


# -- value objects and the schema ---------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Command(256, 500),
        lambda: Command(1, -1),
        lambda: Command(1, 500, seq=0x10000),
        lambda: Command(True, 500),
        lambda: Command(1.0, 500),
        lambda: Status(0, position=70000),
    ],
)
def test_fields_must_fit_their_wire_type(build):
    with pytest.raises(MessageValueError) as info:
        build()
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


def test_make_command_checks_semantic_range():
    assert make_command(Intent.CLOSE, 1000, 5) == Command(2, 1000, seq=5)
    for intent, ttl in [(3, 500), (Intent.OPEN, 0), (Intent.OPEN, 1001)]:
        with pytest.raises(MessageValueError):
            make_command(intent, ttl, 1)


def test_schema_hash_is_sha256_prefix_of_the_canonical_text():
    import hashlib

    assert int.from_bytes(hashlib.sha256(SCHEMA_TEXT.encode()).digest()[:4], "big") == SCHEMA_HASH
    assert SCHEMA_TEXT.startswith("myhand-protocol 1\n") and SCHEMA_TEXT.endswith("\n")
    assert "message 0x10 COMMAND intent:u8 ttl_ms:u16\n" in SCHEMA_TEXT
    assert "enum Intent RELAX=0 OPEN=1 CLOSE=2\n" in SCHEMA_TEXT
    swapped = SCHEMA_TEXT.replace("OPEN=1 CLOSE=2", "OPEN=2 CLOSE=1")
    assert compute_schema_hash(swapped) != SCHEMA_HASH
