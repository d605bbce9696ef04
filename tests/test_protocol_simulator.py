"""The orthosis simulator as a real process on a real pseudo-terminal, measured from its log."""

from __future__ import annotations

import itertools
import os
import signal
import time

import pytest
from protocol_helpers import Host, SimProcess, wait_until

from firmware_protocol import (
    Ack,
    Clear,
    Command,
    Fault,
    FaultCode,
    HandshakeError,
    Heartbeat,
    Hello,
    Intent,
    LinkLost,
    LinkUnavailable,
    Result,
    Role,
    State,
    Status,
    Stop,
    check_reply,
    encode,
    open_transport,
)
from firmware_protocol.errors import LinkTimeout
from firmware_protocol.handshake import check_hello
from firmware_protocol.host import handshake

# Timer events must never come early; on a loaded 2-core CI machine they may come late. The log
# stamps "command" a few microseconds after the frame was decoded, hence EARLY_S.
LATE_S = 0.12
EARLY_S = 0.001


def is_ack_for(msg):
    return lambda m: isinstance(m, Ack) and m.acked_seq == msg.seq and m.acked_type == msg.TYPE


@pytest.fixture
def sim(tmp_path):
    with SimProcess(tmp_path) as process:
        yield process
        assert process.stop() == 0


def test_start_handshake_telemetry_and_clean_exit(tmp_path):
    with SimProcess(tmp_path) as sim:
        assert sim.path.startswith("/dev/pts/")
        assert os.readlink(sim.link) == sim.path
        first = sim.events()[:3]
        assert [e["event"] for e in first] == ["start", "appear", "state"]
        assert first[2]["state"] == "safe"
        with Host(str(sim.link)) as host:
            hello = host.handshake()
            assert hello.role == Role.DEVICE and hello.watchdog_ms == 200 and hello.max_ttl_ms == 1000
            status = host.wait_for(lambda m: isinstance(m, Status), what="STATUS")
            assert status.state == State.SAFE and status.position == 500
            host.wait_for(lambda m: isinstance(m, Heartbeat), what="HEARTBEAT")
        assert sim.stop(signal.SIGTERM) == 0
        assert not sim.link.exists() and not sim.link.is_symlink()
        assert not sim.control_path.exists()
        last = sim.events()[-1]
        assert last["event"] == "exit" and last["state"] == "safe"
        assert all(isinstance(e["t"], float) for e in sim.events())


def test_sigint_also_exits_cleanly(tmp_path):
    with SimProcess(tmp_path) as sim:
        assert sim.stop(signal.SIGINT) == 0
        assert sim.events()[-1]["event"] == "exit"
        assert not sim.link.is_symlink()


def test_watchdog_goes_safe_when_the_host_goes_silent(sim):
    with Host(sim.path) as host:
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=1000)
        ack = host.wait_for(is_ack_for(cmd), what="ACK")
        assert (ack.result, ack.state) == (Result.OK, State.OPEN)
        accepted = sim.wait_event("command", seq=cmd.seq)
        assert accepted["intent"] == "open"
        safe = sim.wait_event("state", after=accepted["t"], state="safe")
        assert safe["reason"] == "watchdog"
        elapsed = safe["t"] - accepted["t"]
        assert 0.200 - EARLY_S <= elapsed <= 0.200 + LATE_S, elapsed
        status = host.wait_for(lambda m: isinstance(m, Status) and m.state == State.SAFE, what="SAFE status")
        assert status.ttl_left_ms == 0


def test_ttl_expiry_goes_safe_even_with_heartbeats(sim):
    with Host(sim.path) as host:
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.CLOSE), ttl_ms=300)
        accepted = sim.wait_event("command", seq=cmd.seq)
        deadline = time.monotonic() + 2.0
        while not sim.find("state", accepted["t"], state="safe") and time.monotonic() < deadline:
            host.send(Heartbeat, uptime_ms=0)  # keep the watchdog fed every ~40 ms
            host.poll(timeout=0.04)
        safe = sim.wait_event("state", after=accepted["t"], state="safe", timeout=0.5)
        assert safe["reason"] == "ttl"
        elapsed = safe["t"] - accepted["t"]
        assert 0.300 - EARLY_S <= elapsed <= 0.300 + LATE_S, elapsed


def test_actuator_takes_time_to_travel(tmp_path):
    with SimProcess(tmp_path, "--travel-s", "0.5", "--status-hz", "50") as sim, Host(sim.path) as host:
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.CLOSE), ttl_ms=1000)
        accepted = sim.wait_event("command", seq=cmd.seq)
        positions = []
        while not sim.find("actuator", accepted["t"], moving=False):
            host.send(Heartbeat, uptime_ms=0)
            positions += [
                m.position for m in host.poll(timeout=0.03) if isinstance(m, Status) and m.state == State.CLOSE
            ]
            assert time.monotonic() < accepted["t"] + 2.0, "the actuator never arrived"
        arrived = sim.find("actuator", accepted["t"], moving=False)[0]
        assert arrived["position"] == 1000
        travel = arrived["t"] - accepted["t"]
        assert 0.25 - EARLY_S <= travel <= 0.25 + LATE_S, travel  # half the travel (500 -> 1000) at 0.5 s/full
        assert positions == sorted(positions) and len([p for p in positions if 500 < p < 1000]) >= 3
        assert sim.stop() == 0


def test_commands_are_acked_quickly(sim):
    with Host(sim.path) as host:
        host.handshake()
        latencies = []
        for i in range(20):
            sent = time.monotonic()
            cmd = host.send(Command, intent=i % 3, ttl_ms=500)
            host.wait_for(is_ack_for(cmd), what="ACK")
            latencies.append(time.monotonic() - sent)
            logged = sim.wait_event("command", seq=cmd.seq)
            assert logged["t"] - sent < 0.05
        latencies.sort()
        assert latencies[len(latencies) // 2] < 0.01, latencies


def test_unplug_and_reappear(sim):
    host = Host(str(sim.link))
    host.handshake()
    cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=1000)
    host.wait_for(is_ack_for(cmd))
    old_path = sim.path
    sim.control("vanish", ms=400)
    with pytest.raises(LinkLost):
        host.wait_for(lambda m: False, timeout=2.0)
    host.close()
    vanished = sim.wait_event("vanish")
    assert not sim.link.is_symlink()  # udev removes the link on unplug
    with pytest.raises(LinkUnavailable):
        open_transport(str(sim.link))
    accepted = sim.wait_event("command", seq=cmd.seq)
    safe = sim.wait_event("state", after=accepted["t"], state="safe")
    assert safe["reason"] == "watchdog"  # the firmware goes safe on its own
    new_path = sim.read_line(timeout=3.0)
    appeared = sim.wait_event("appear", after=vanished["t"])
    assert appeared["path"] == new_path and appeared["t"] - vanished["t"] >= 0.4
    assert os.readlink(sim.link) == new_path
    with Host(str(sim.link)) as again:
        again.handshake()
        cmd = again.send(Command, intent=int(Intent.CLOSE), ttl_ms=500)
        assert again.wait_for(is_ack_for(cmd)).result == Result.OK
    assert old_path.startswith("/dev/pts/")


def test_sigusr1_vanishes_for_the_configured_time(tmp_path):
    with SimProcess(tmp_path, "--vanish-ms", "200") as sim:
        host = Host(str(sim.link))
        host.handshake()
        sim.proc.send_signal(signal.SIGUSR1)
        with pytest.raises(LinkLost):
            host.wait_for(lambda m: False, timeout=2.0)
        host.close()
        sim.read_line(timeout=3.0)
        with Host(str(sim.link)) as again:
            again.handshake()
        assert sim.stop() == 0


def test_host_with_other_definitions_is_refused(sim):
    other_hash = 0x12345678
    with Host(sim.path) as host:
        host.link.write(encode(Hello(1, int(Role.HOST), other_hash, seq=1)))
        hello = host.wait_for(lambda m: isinstance(m, Hello), what="the device HELLO")
        with pytest.raises(HandshakeError, match="schema hash"):
            check_hello(hello, schema_hash=other_hash)  # what that host would conclude
        fault = host.wait_for(lambda m: isinstance(m, Fault), what="FAULT")
        assert fault.code == FaultCode.SCHEMA_MISMATCH and fault.detail == other_hash
        with pytest.raises(HandshakeError, match="refused"):
            check_reply(fault)
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)
        ack = host.wait_for(is_ack_for(cmd))
        assert (ack.result, ack.state) == (Result.REJECT_NO_SESSION, State.FAULT)
    assert sim.find("hello", match=False)
    assert sim.find("state", state="fault")
    assert not sim.find("command")


def test_device_with_other_definitions_fails_the_host_handshake(tmp_path):
    with SimProcess(tmp_path, "--schema-hash", "0x01020304") as sim, Host(sim.path) as host:
        with pytest.raises(HandshakeError, match="schema hash 0x01020304"):
            handshake(host.link, host.decoder, timeout=2.0)
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)  # a careless host: still refused
        assert host.wait_for(is_ack_for(cmd)).result == Result.REJECT_NO_SESSION
        assert sim.stop() == 0
    assert not sim.find("command") and sim.find("state", state="fault")


def test_device_of_another_protocol_version_fails_closed(tmp_path):
    with SimProcess(tmp_path, "--protocol-version", "2") as sim, Host(sim.path) as host:
        with pytest.raises(HandshakeError, match="protocol version 2, expected 1"):
            handshake(host.link, host.decoder, timeout=2.0)  # its HELLO is still readable
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)
        sim.wait_event("rx_error", kind="version")  # it cannot read our version-1 COMMAND
        wait_until(
            lambda: host.poll(0.02) is not None and host.decoder.errors["version"] > 0,
            2.0,
            "version errors on the host (its STATUS frames are version 2)",
        )
        assert not any(isinstance(m, Ack) and m.acked_seq == cmd.seq for m in host.received)
        assert sim.stop() == 0
    assert not sim.find("command")
    assert sim.find("hello", match=False) and sim.find("state", state="fault")


@pytest.mark.faults
def test_raised_fault_latches_until_clear(sim):
    with Host(sim.path) as host:
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.CLOSE), ttl_ms=1000)
        host.wait_for(is_ack_for(cmd))
        sim.control("fault", code="overcurrent", hold=True, detail=1500)
        fault = host.wait_for(lambda m: isinstance(m, Fault), what="FAULT")
        assert (fault.code, fault.detail) == (FaultCode.OVERCURRENT, 1500)
        assert sim.wait_event("state", state="fault")["reason"] == "fault"
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)
        assert host.wait_for(is_ack_for(cmd)).result == Result.REJECT_FAULT
        clear = host.send(Clear)
        assert host.wait_for(is_ack_for(clear)).result == Result.REJECT_FAULT_ACTIVE
        sim.control("release")
        sim.wait_event("control", cmd="release")
        clear = host.send(Clear)
        ack = host.wait_for(is_ack_for(clear))
        assert (ack.result, ack.state) == (Result.OK, State.SAFE)
        stop = host.send(Stop, reason=1)
        assert host.wait_for(is_ack_for(stop)).result == Result.OK


@pytest.mark.faults
def test_reboot_drops_the_session(sim):
    with Host(sim.path) as host:
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=1000)
        host.wait_for(is_ack_for(cmd))
        sim.control("reboot")
        hello = host.wait_for(lambda m: isinstance(m, Hello), what="the boot HELLO")
        assert hello.role == Role.DEVICE
        assert sim.wait_event("reboot")["reason"] == "request"
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=1000)
        assert host.wait_for(is_ack_for(cmd)).result == Result.REJECT_NO_SESSION
        host.handshake()
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=1000)
        assert host.wait_for(is_ack_for(cmd)).result == Result.OK


@pytest.mark.faults
def test_stalled_loop_sends_no_heartbeat_and_the_hardware_watchdog_resets(tmp_path):
    with SimProcess(tmp_path, "--hw-watchdog-ms", "400") as sim, Host(sim.path) as host:
        host.handshake()
        host.wait_for(lambda m: isinstance(m, Heartbeat))
        sim.control("hang", ms=250)
        hang = sim.wait_event("hang")
        end = sim.wait_event("hang_end")
        assert end["t"] - hang["t"] >= 0.25
        host.wait_for(
            lambda m: isinstance(m, Heartbeat) and m.uptime_ms > 1000 * (end["t"] - hang["t"]),
            what="heartbeats after the stall",
        )
        uptimes = [m.uptime_ms for m in host.received if isinstance(m, Heartbeat)]
        gaps = [b - a for a, b in itertools.pairwise(uptimes)]
        assert max(gaps) >= 250 and min(gaps) >= 90, gaps  # silent while stalled, 10 Hz otherwise
        sim.control("hang", ms=10_000)
        hang2 = sim.wait_event("hang", after=end["t"])
        reboot = sim.wait_event("reboot", timeout=3.0)
        assert reboot["reason"] == "hw_watchdog"
        assert reboot["t"] - hang2["t"] >= 0.4
        fault = host.wait_for(lambda m: isinstance(m, Fault), what="INTERNAL fault after reset")
        assert fault.code == FaultCode.INTERNAL
        assert sim.wait_event("state", after=hang2["t"], state="fault")
        assert sim.stop() == 0


@pytest.mark.faults
def test_corrupted_and_dropped_bytes_are_counted_and_retries_get_through(tmp_path):
    with SimProcess(tmp_path, "--corrupt", "0.005", "--drop", "0.002", "--seed", "7") as sim, Host(sim.path) as host:
        deadline = time.monotonic() + 8.0
        while True:  # a lost or damaged HELLO (either way) is retried
            assert time.monotonic() < deadline, "no handshake through the noisy link"
            try:
                handshake(host.link, host.decoder, seq=host.next_seq(), timeout=0.2)
                break
            except LinkTimeout:
                continue
        acked = 0
        while acked < 5:
            assert time.monotonic() < deadline, f"only {acked} commands acknowledged"
            cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)
            try:
                host.wait_for(is_ack_for(cmd), timeout=0.1)
                acked += 1
            except AssertionError:
                pass
        for _ in range(600):  # enough bytes (~7 kB) for the receive-side injection to act on
            host.send(Heartbeat, uptime_ms=0)
        # Two errors at least: opening the port may cut one frame, the rest is injected damage.
        wait_until(lambda: host.poll(0.02) is not None and host.decoder.error_count >= 2, 5.0, "host decode errors")
        assert sim.stop() == 0
        stats = sim.events()[-1]
        assert stats["event"] == "exit"
        assert stats["tx_corrupted"] + stats["tx_dropped"] > 0
        assert stats["rx_corrupted"] > 0 and stats["rx_dropped"] > 0
        assert sum(stats["decode_errors"].values()) == len(sim.find("rx_error")) > 0
        assert sim.find("command")


@pytest.mark.faults
def test_ack_delay_and_no_ack(sim):
    with Host(sim.path) as host:
        host.handshake()
        sim.control("set", ack_delay_ms=150)
        sim.wait_event("inject")
        sent = time.monotonic()
        cmd = host.send(Command, intent=int(Intent.OPEN), ttl_ms=500)
        host.wait_for(is_ack_for(cmd), timeout=2.0)
        assert time.monotonic() - sent >= 0.15
        assert sim.wait_event("command", seq=cmd.seq)["t"] - sent < 0.1  # applied at once
        sim.control("set", ack_delay_ms=0, no_ack=True)
        wait_until(lambda: len(sim.find("inject")) == 2, 2.0, "second inject")
        cmd = host.send(Command, intent=int(Intent.CLOSE), ttl_ms=500)
        sim.wait_event("command", seq=cmd.seq)
        with pytest.raises(AssertionError, match="timed out"):
            host.wait_for(is_ack_for(cmd), timeout=0.3)


def test_bad_control_requests_are_logged_not_fatal(sim):
    sim.control("explode")
    sim.control("fault", code="no-such-fault")
    sim.control("set", drop=2.0)
    wait_until(lambda: len(sim.find("control_error")) == 3, 2.0, "three control errors")
    assert sim.proc.poll() is None


def test_refuses_to_replace_a_real_file(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "myhand"
    target.write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "firmware_protocol.cli", "orthosis", "--link", str(target)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "not a symlink" in result.stderr
    assert target.read_text() == "precious"
