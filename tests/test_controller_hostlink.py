"""controller.hostlink against the firmware's own state machine (firmware_protocol.device.Device),
frames going through the real codec, with a fake clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from controller.config import SerialConfig
from controller.hostlink import HostLink, Phase
from firmware_protocol import Ack, Command, Decoder, FaultCode, Intent, State, Stop, StopReason, encode
from firmware_protocol.device import Device, DeviceConfig


class Bench:
    """HostLink <-> Device, every frame encoded and decoded; ``drop_to_host`` filters replies."""

    def __init__(self, device: DeviceConfig | None = None, config: SerialConfig | None = None) -> None:
        self.t = 0.0
        self.host = HostLink(config or SerialConfig())
        self.device = Device(device or DeviceConfig())
        self.to_device, self.to_host = Decoder(), Decoder()
        self.sent: list = []  # host frames the device received
        self.drop_to_host: Callable[[object], bool] = lambda msg: False
        self.silent = False
        self._deliver_host(self.device.boot(self.t))

    def _deliver_host(self, msgs) -> None:
        replies = []
        for msg in msgs:
            if self.silent or self.drop_to_host(msg):
                continue
            for decoded in self.to_host.feed(encode(msg)):
                replies += self.host.receive(decoded, self.t)
        self.send(replies)

    def send(self, msgs) -> None:
        for msg in msgs:
            if msg is None:
                continue
            for decoded in self.to_device.feed(encode(msg)):
                self.sent.append(decoded)
                self._deliver_host(self.device.receive(decoded, self.t))

    def run(self, seconds: float, step: float = 0.005) -> None:
        end = self.t + seconds
        while self.t < end - 1e-12:
            self.t += step
            self.send(self.host.tick(self.t))
            out = self.device.tick(self.t)
            if not self.silent:
                self._deliver_host(out)

    def connect(self) -> None:
        self.send(self.host.opened(self.t))
        assert self.host.phase == Phase.READY


def test_handshake_then_commands_are_accepted_and_acknowledged():
    b = Bench()
    assert b.host.phase == Phase.CLOSED and b.host.command(Intent.OPEN, 0.0) is None
    b.connect()
    assert b.device.session and b.host.device.max_ttl_ms == 1000
    assert b.host.ttl_ms == 300 and b.host.heartbeat_s == 0.05
    cmd = b.host.command(Intent.OPEN, b.t)
    b.send([cmd])
    assert b.device.state == State.OPEN and b.host.device_state == State.OPEN
    assert b.host.outstanding == 0 and b.host.counters["acks_ok"] == 1
    assert cmd.ttl_ms == 300


def test_heartbeats_keep_the_device_watchdog_fed_and_the_ttl_still_expires():
    b = Bench()
    b.connect()
    b.send([b.host.command(Intent.CLOSE, b.t)])
    b.run(0.25)
    assert b.device.state == State.CLOSE  # heartbeats fed the 200 ms watchdog
    assert b.host.counters["heartbeats_sent"] >= 4
    b.run(0.1)
    assert b.device.state == State.SAFE  # the 300 ms TTL is not extended by heartbeats


def test_a_lost_ack_resends_the_same_frame():
    b = Bench()
    b.connect()
    dropped = []

    def drop_first_ack(msg):
        if isinstance(msg, Ack) and not dropped:
            dropped.append(msg)
            return True
        return False

    b.drop_to_host = drop_first_ack
    cmd = b.host.command(Intent.OPEN, b.t)
    b.send([cmd])
    assert b.host.outstanding == 1
    b.run(0.06)
    commands = [m for m in b.sent if isinstance(m, Command)]
    assert [m.seq for m in commands] == [cmd.seq, cmd.seq]  # resent with the same seq
    assert b.host.outstanding == 0 and b.host.counters["ack_retries"] == 1
    assert b.host.fault() is None


def test_no_acks_at_all_is_a_fault_until_acks_come_back():
    b = Bench()
    b.connect()
    b.drop_to_host = lambda msg: isinstance(msg, Ack)
    b.send([b.host.command(Intent.OPEN, b.t)])
    b.run(0.19)
    assert not b.host.acks_lost
    b.run(0.02)
    assert b.host.acks_lost and b.host.fault().startswith("no ACK from the device")
    assert b.host.counters["ack_retries"] == 3 and b.host.counters["ack_timeouts"] == 1
    b.run(1.0)
    probes = [m for m in b.sent if isinstance(m, Stop) and m.reason == StopReason.HOST_ERROR]
    assert probes  # a STOP probe goes out while acks are missing
    b.drop_to_host = lambda msg: False
    b.run(1.0)
    assert not b.host.acks_lost and b.host.fault() is None


def test_a_device_with_another_schema_is_refused_fail_closed():
    b = Bench(DeviceConfig(schema_hash=0x12345678))
    b.send(b.host.opened(b.t))
    assert b.host.phase == Phase.MISMATCH
    assert "schema hash 0x12345678" in b.host.fault()
    assert b.host.command(Intent.OPEN, b.t) is None
    b.run(0.5)
    assert not [m for m in b.sent if isinstance(m, Command)]


def test_a_device_reboot_starts_the_handshake_again():
    b = Bench()
    b.connect()
    b._deliver_host(b.device.boot(b.t))  # unsolicited HELLO
    assert b.host.phase == Phase.READY and b.device.session
    assert b.host.counters["device_reboots"] == 1 and b.host.counters["handshakes"] == 2


def test_a_status_without_session_means_the_device_rebooted_unseen():
    b = Bench()
    b.connect()
    b.silent = True
    b.device.boot(b.t)  # its boot HELLO is lost
    b.silent = False
    b.run(0.05)
    assert b.host.counters["device_reboots"] == 1 and b.device.session and b.host.phase == Phase.READY


def test_a_device_fault_stops_commands_until_cleared():
    b = Bench()
    b.connect()
    b._deliver_host(b.device.raise_fault(FaultCode.OVERCURRENT, b.t, detail=1500))
    assert b.host.device_fault and b.host.fault() == "device fault: overcurrent"
    assert b.host.command(Intent.OPEN, b.t) is None
    b.send([b.host.clear(b.t)])
    assert b.device.state == State.SAFE and not b.host.device_fault and b.host.ready


def test_a_silent_device_is_noticed_and_recovers():
    b = Bench()
    b.connect()
    b.silent = True
    b.run(0.29)
    assert b.host.phase == Phase.READY
    b.run(0.02)
    assert b.host.phase == Phase.SILENT and not b.host.ready
    assert b.host.command(Intent.OPEN, b.t) is None
    b.silent = False
    b.run(0.1)
    assert b.host.phase == Phase.READY and b.host.counters["device_silent"] == 1


def test_newer_commands_supersede_older_ones():
    b = Bench()
    b.connect()
    b.drop_to_host = lambda msg: isinstance(msg, Ack)
    first = b.host.command(Intent.OPEN, b.t)
    second = b.host.command(Intent.RELAX, b.t)
    b.send([first, second])
    assert b.host.outstanding == 1 and second.seq == (first.seq + 1) & 0xFFFF
    b.run(0.06)
    resent = [m.seq for m in b.sent if isinstance(m, Command)]
    assert resent == [first.seq, second.seq, second.seq]


@pytest.mark.parametrize(("ttl", "device_max", "expected"), [(300, 1000, 300), (300, 200, 200), (1000, 1000, 1000)])
def test_ttl_is_capped_by_the_devices_max_ttl(ttl, device_max, expected):
    b = Bench(DeviceConfig(max_ttl_ms=device_max), SerialConfig(ttl_ms=ttl))
    b.connect()
    cmd = b.host.command(Intent.OPEN, b.t)
    b.send([cmd])
    assert cmd.ttl_ms == expected and b.device.state == State.OPEN
