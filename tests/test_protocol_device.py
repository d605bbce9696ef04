"""The firmware semantics, on the pure device state machine with a fake clock."""

from __future__ import annotations

import itertools

import pytest

from firmware_protocol import (
    Ack,
    Clear,
    Command,
    Fault,
    FaultCode,
    Heartbeat,
    Hello,
    Intent,
    Result,
    Role,
    State,
    Status,
    StatusFlag,
    Stop,
    host_hello,
)
from firmware_protocol.device import Device, DeviceConfig, seq_newer
from firmware_protocol.errors import ProtocolError
from firmware_protocol.messages import fault_bit


class Rig:
    """A device, a fake clock and the events it emitted."""

    def __init__(self, **config):
        self.events = []
        self.device = Device(DeviceConfig(**config), emit=lambda e, f: self.events.append((e, f)))
        self.now = 0.0
        self.out = self.device.boot(self.now)
        self.seq = 0

    def at(self, t):
        self.now = t
        return self.device.tick(t)

    def send(self, msg, t=None):
        if t is not None:
            self.now = t
        return self.device.receive(msg, self.now)

    def hello(self, **kw):
        return self.send(host_hello(seq=self.next_seq()) if not kw else Hello(seq=self.next_seq(), **kw))

    def next_seq(self):
        self.seq += 1
        return self.seq

    def command(self, intent, ttl_ms=500, seq=None):
        replies = self.send(Command(int(intent), ttl_ms, seq=self.next_seq() if seq is None else seq))
        (ack,) = [r for r in replies if isinstance(r, Ack)]
        return ack

    def states(self):
        return [(f["state"], f["reason"]) for e, f in self.events if e == "state"]


def session(**config):
    rig = Rig(**config)
    rig.hello()
    return rig


def test_boot_is_safe_without_session_and_announces_hello():
    rig = Rig()
    assert rig.device.state == State.SAFE and not rig.device.session
    (hello,) = rig.out
    assert isinstance(hello, Hello) and hello.role == Role.DEVICE
    assert (hello.watchdog_ms, hello.max_ttl_ms) == (200, 1000)
    assert rig.states() == [("safe", "boot")]
    assert rig.command(Intent.OPEN).result == Result.REJECT_NO_SESSION


def test_command_sets_target_and_is_acked_with_the_resulting_state():
    rig = session()
    ack = rig.command(Intent.CLOSE, 500)
    assert (ack.result, ack.state, ack.acked_type) == (Result.OK, State.CLOSE, Command.TYPE)
    assert ack.acked_seq == rig.seq
    assert ("command", {"intent": "close", "seq": rig.seq, "ttl_ms": 500, "rx_t": rig.now}) in rig.events


def test_watchdog_makes_safe_when_no_valid_frame_arrives():
    rig = session()
    rig.command(Intent.OPEN, 1000)
    rig.at(0.199)
    assert rig.device.state == State.OPEN
    rig.at(0.2005)
    assert rig.device.state == State.SAFE
    assert rig.states()[-1] == ("safe", "watchdog")


def test_heartbeats_feed_the_watchdog_but_ttl_still_expires():
    rig = session()
    rig.command(Intent.OPEN, 300)
    for i in range(1, 6):
        rig.send(Heartbeat(seq=rig.next_seq()), t=i * 0.05)
        rig.at(i * 0.05)
    assert rig.device.state == State.OPEN
    assert rig.device.ttl_left_ms(0.25) == 50
    rig.at(0.2999)
    assert rig.device.state == State.OPEN
    rig.at(0.3)
    assert rig.device.state == State.SAFE and rig.states()[-1] == ("safe", "ttl")


def test_invalid_frames_do_not_feed_the_watchdog():
    rig = session()
    rig.command(Intent.OPEN, 1000)
    for i in range(1, 5):
        rig.now = i * 0.05
        rig.device.rx_error("crc")
    rig.at(0.21)
    assert rig.device.state == State.SAFE
    assert rig.device.status(0.21).rx_errors == 4


def test_echoed_device_frames_do_not_feed_the_watchdog():
    rig = session()
    rig.command(Intent.OPEN, 1000)
    rig.send(Status(int(State.OPEN)), t=0.15)
    rig.send(Hello(1, int(Role.DEVICE), 0), t=0.16)
    rig.at(0.21)
    assert rig.device.state == State.SAFE and rig.device.unexpected == 2


@pytest.mark.parametrize(
    ("intent", "ttl", "result"),
    [
        (3, 500, Result.REJECT_INTENT),
        (255, 500, Result.REJECT_INTENT),
        (1, 0, Result.REJECT_TTL),
        (1, 1001, Result.REJECT_TTL),
        (1, 1, Result.OK),
        (2, 1000, Result.OK),
    ],
)
def test_commands_are_range_checked(intent, ttl, result):
    rig = session()
    ack = rig.command(intent, ttl)
    assert ack.result == result
    assert rig.device.state == (State.SAFE if result != Result.OK else State(intent + 1))


def test_duplicate_is_idempotent_and_stale_or_conflicting_seq_rejected():
    rig = session()
    first = Command(int(Intent.OPEN), 500, seq=100)
    assert rig.send(first, t=0.0)[0].result == Result.OK
    assert rig.send(first, t=0.3)[0].result == Result.OK  # retransmission: acked again ...
    assert rig.device.command_deadline == pytest.approx(0.5)  # ... but the TTL is not extended
    assert [e for e, _ in rig.events].count("command") == 1
    assert rig.send(Command(int(Intent.CLOSE), 500, seq=100), t=0.31)[0].result == Result.REJECT_SEQ
    assert rig.send(Command(int(Intent.CLOSE), 500, seq=99), t=0.32)[0].result == Result.REJECT_SEQ
    assert rig.device.state == State.OPEN
    assert rig.send(Command(int(Intent.CLOSE), 500, seq=101), t=0.33)[0].result == Result.OK


def test_sequence_numbers_wrap():
    assert seq_newer(0, 0xFFFF) and seq_newer(5, 0xFFF0) and not seq_newer(0xFFF0, 5)
    assert not seq_newer(7, 7) and not seq_newer(0x8007, 7)
    rig = session()
    assert rig.command(Intent.OPEN, seq=0xFFFF).result == Result.OK
    assert rig.command(Intent.CLOSE, seq=0).result == Result.OK


def test_a_new_hello_goes_safe_and_restarts_the_sequence_space():
    rig = session()
    rig.command(Intent.CLOSE, seq=500)
    rig.hello()
    assert rig.device.state == State.SAFE and rig.states()[-1] == ("safe", "hello")
    assert rig.command(Intent.OPEN, seq=3).result == Result.OK


def test_stop_is_always_accepted():
    rig = Rig()
    (ack,) = rig.send(Stop(seq=1))
    assert ack.result == Result.OK  # even before any HELLO
    rig.hello()
    rig.command(Intent.OPEN)
    (ack,) = rig.send(Stop(1, seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.SAFE)
    assert rig.states()[-1] == ("safe", "stop")
    rig.device.raise_fault(FaultCode.OVERCURRENT, rig.now)
    (ack,) = rig.send(Stop(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.FAULT)


def test_fault_latches_until_clear():
    rig = session()
    rig.command(Intent.CLOSE)
    (fault,) = rig.device.raise_fault(FaultCode.OVERCURRENT, 0.01, detail=1500)
    assert isinstance(fault, Fault) and fault.code == FaultCode.OVERCURRENT and fault.detail == 1500
    assert rig.device.state == State.FAULT and rig.device.command_deadline is None
    assert rig.command(Intent.OPEN).result == Result.REJECT_FAULT
    rig.at(5.0)  # no timer leaves FAULT
    assert rig.device.state == State.FAULT
    status = rig.device.status(5.0)
    assert status.fault_flags == fault_bit(FaultCode.OVERCURRENT) and status.state == State.FAULT
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.SAFE)
    assert rig.device.fault_flags == 0
    assert rig.command(Intent.OPEN).result == Result.OK


def test_clear_is_refused_while_the_condition_persists_and_is_a_no_op_outside_fault():
    rig = session()
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.SAFE)
    rig.device.raise_fault(FaultCode.OVERTEMPERATURE, 0.0, hold=True)
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.REJECT_FAULT_ACTIVE, State.FAULT)
    rig.device.release_faults()
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.SAFE)


def test_schema_mismatch_fails_closed():
    rig = Rig()
    replies = rig.send(Hello(1, int(Role.HOST), 0x12345678, seq=1))
    assert [type(r) for r in replies] == [Hello, Fault]
    assert replies[1].code == FaultCode.SCHEMA_MISMATCH and replies[1].detail == 0x12345678
    assert rig.device.state == State.FAULT and not rig.device.session
    assert rig.command(Intent.OPEN).result == Result.REJECT_NO_SESSION
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert ack.result == Result.REJECT_NO_SESSION
    rig.send(Hello(2, int(Role.HOST), 0, seq=rig.next_seq()))  # another protocol version
    assert not rig.device.session
    rig.hello()  # a matching host, then CLEAR
    (ack,) = rig.send(Clear(seq=rig.next_seq()))
    assert (ack.result, ack.state) == (Result.OK, State.SAFE)


def test_actuator_moves_at_finite_speed_and_safe_returns_to_neutral():
    rig = session(travel_s=1.0, neutral=500)
    rig.command(Intent.OPEN, 1000)
    rig.send(Heartbeat(seq=rig.next_seq()), t=0.1)
    rig.send(Heartbeat(seq=rig.next_seq()), t=0.2)
    rig.at(0.25)
    assert rig.device.position == pytest.approx(250)
    assert rig.device.status(0.25).flags & StatusFlag.MOVING
    rig.send(Heartbeat(seq=rig.next_seq()), t=0.3)
    rig.send(Heartbeat(seq=rig.next_seq()), t=0.4)
    rig.at(0.5)
    assert rig.device.position == 0
    assert not rig.device.status(0.5).flags & StatusFlag.MOVING
    rig.at(0.7)  # watchdog at 0.6: turns back at 0.6, 0.1 s of travel since
    assert rig.device.state == State.SAFE
    assert rig.device.position == pytest.approx(100)
    rig.at(2.0)
    assert rig.device.position == 500
    moves = [f for e, f in rig.events if e == "actuator"]
    assert [m["moving"] for m in moves] == [True, False, True, False]


def test_telemetry_cadence():
    rig = session(status_hz=25, heartbeat_hz=10)
    sent = []
    for i in range(1, 101):
        sent += rig.at(i * 0.01)
    statuses = [m for m in sent if isinstance(m, Status)]
    beats = [m for m in sent if isinstance(m, Heartbeat)]
    assert 25 <= len(statuses) <= 26 and 10 <= len(beats) <= 11
    assert all(30 <= b.uptime_ms - a.uptime_ms <= 50 for a, b in itertools.pairwise(statuses))
    assert all(90 <= b.uptime_ms - a.uptime_ms <= 110 for a, b in itertools.pairwise(beats))
    seqs = [m.seq for m in sent]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert statuses[-1].uptime_ms >= 960 and statuses[-1].flags & StatusFlag.SESSION


def test_boot_with_fault_latches_it():
    rig = Rig()
    out = rig.device.boot(1.0, fault=FaultCode.INTERNAL)
    assert [type(m) for m in out] == [Hello, Fault]
    assert rig.device.state == State.FAULT


def test_config_is_validated():
    with pytest.raises(ProtocolError):
        DeviceConfig(watchdog_ms=0)
    with pytest.raises(ProtocolError):
        DeviceConfig(neutral=1001)
