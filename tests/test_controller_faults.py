"""Faults as states, not crashes (real daemon, simulator, LSL, systemd notify socket):

- start-up in the wrong order: no port, then no stream; READY=1 only once both are up;
- the orthosis unplugged and back (new pty behind the same symlink);
- a device fault: state ``fault``, no commands, ``ctl clear`` recovers;
- the armband stream lost, then back; then a stream with other metadata: refused, still safe;
- a model whose metadata does not match the stream at start: exit 2 with a clear one-line error.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from rig.models import male13_model, myo_recording
from rig.processes import BIN, Daemon, Sim, Sub, unique_name, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.faults]


@pytest.fixture(scope="module")
def model(myo_src, tmp_path_factory):
    return male13_model(tmp_path_factory.getbasetemp(), myo_src)


@pytest.fixture(scope="module")
def recording(myo_src):
    return myo_recording(myo_src, "Male13", "Test0")


class Notify:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, read by a thread (as systemd
    reads it at once: a UNIX datagram queue holds only a few messages)."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def drain(self) -> list[tuple[float, str]]:
        return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        self.sock.close()


def state_is(daemon: Daemon, state: str):
    def check():
        s = daemon.status()
        return s if s is not None and s["state"] == state else None

    return check


def test_faults_are_states_with_a_safe_reaction(tmp_path, model, recording):
    from rig.replay import Replay

    notify = Notify(tmp_path / "notify")
    name = unique_name()
    link = tmp_path / "myhand"
    daemon = Daemon(
        tmp_path,
        stream=name,
        port=str(link),
        model=model,
        env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"},
    )
    sub = Sub(daemon.monitor)
    sim = replay = None
    try:
        # no port, no stream: waiting, not ready
        s = wait_until(
            lambda: (
                (st := state_is(daemon, "waiting_for_link")())
                and st["link"]["open"] is False
                and st["link"]["problem"] != "not connected"
                and st
            ),
            20,
            "a failed open",
        )
        assert s["link"]["problem"] == f"{link}: no such device" and s["ready"] is False
        sim = Sim(tmp_path)
        # the handshake makes the link ready; the device's state comes with its next STATUS frame,
        # which may be a moment later: wait for both, in any order
        s = wait_until(
            lambda: (st := state_is(daemon, "waiting_for_stream")()) and st["link"]["device_state"] is not None and st,
            10,
            "waiting_for_stream, device state known",
        )
        assert s["link"]["phase"] == "ready" and s["link"]["device_state"] == "safe"
        assert not any("READY=1" in m for _, m in notify.drain())
        replay = Replay(recording.emg, recording.labels, 200.0, name=name, loop=True).start()
        wait_until(state_is(daemon, "running"), 10, "running")
        messages = notify.drain()
        ready = [m for _, m in messages if "READY=1" in m]
        assert len(ready) == 1
        statuses = [m for _, m in messages if m.startswith("STATUS=")]
        assert statuses[0].startswith("STATUS=waiting_for_link") and "STATUS=running" in statuses
        watchdogs = [t for t, m in messages if m == "WATCHDOG=1"]
        assert len(watchdogs) >= 3  # every WATCHDOG_USEC/2 = 200 ms from the control loop

        # the orthosis unplugged for 0.5 s: waiting_for_link, then the same path again
        t = time.monotonic()
        sim.send(cmd="vanish", ms=500)
        lost = sub.wait_for(
            lambda topic, m: topic == "event" and m.get("state") == "waiting_for_link",
            3,
            "waiting_for_link after the unplug",
        )
        assert lost["t_mono"] - t < 0.5
        vanished = sim.log.wait_for(lambda e: e["event"] == "vanish" and e["t"] > t, 3, "the unplug")
        reappeared = sim.log.wait_for(lambda e: e["event"] == "appear" and e["t"] > t, 3, "the new pty")
        s = wait_until(state_is(daemon, "running"), 5, "running after the replug")
        assert s["counters"]["link_lost"] == 1 and s["counters"]["handshakes"] >= 2
        sim.log.wait_for(lambda e: e["event"] == "command" and e["t"] > reappeared["t"], 3, "commands on the new pty")
        gap = [e for e in sim.log.events("command") if vanished["t"] < e["t"] < reappeared["t"]]
        assert gap == []

        # a device fault: state fault, STOP, no commands until an explicit clear
        t = time.monotonic()
        sim.send(cmd="fault", code="overcurrent")
        s = wait_until(state_is(daemon, "fault"), 3, "fault")
        assert s["reason"] == "device fault: overcurrent" and s["link"]["device_state"] == "fault"
        time.sleep(0.3)  # not synchronisation: a stretch in which no command may be accepted
        accepted = [e for e in sim.log.events("command") if e["t"] > t]
        assert accepted == []
        assert daemon.ctl("clear")["ok"] is True
        wait_until(state_is(daemon, "running"), 5, "running after clear")

        # a relative path means the caller's directory: refused on the socket, made absolute by ctl
        rel = daemon.request(cmd="reload", path=model.name)
        assert rel["ok"] is False and "path must be absolute" in rel["error"]
        proc = subprocess.run(
            [str(BIN / "myhand-controller"), "ctl", "--control", daemon.control, "reload", f"path={model.name}"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=model.parent,
        )
        assert json.loads(proc.stdout)["path"] == str(model)
        assert sim.log.events("clear")[-1]["result"] == "ok"

        # the armband stream lost, then back with the same name
        t = time.monotonic()
        replay.close()
        stop = sim.log.wait_for(lambda e: e["event"] == "stop" and e["t"] > t, 2, "STOP when the stream is lost")
        assert stop["t"] - t < 0.2
        wait_until(state_is(daemon, "waiting_for_stream"), 5, "waiting_for_stream")
        replay = Replay(recording.emg, recording.labels, 200.0, name=name, loop=True).start()
        s = wait_until(state_is(daemon, "running"), 10, "running with the new outlet")
        assert s["counters"]["stream_lost"] == 1 and s["counters"]["stream_connects"] == 2

        # a stream of the same name with 4 channels: refused, safe, the daemon keeps running
        replay.close()
        replay = Replay(np.zeros((1000, 4)), None, 200.0, name=name, loop=True).start()
        s = wait_until(state_is(daemon, "waiting_for_stream"), 10, "waiting_for_stream (mismatch)")
        wait_until(lambda: "mismatch" in (daemon.status()["input"]["problem"] or ""), 10, "the mismatch")
        problem = daemon.status()["input"]["problem"]
        assert "the model expects 8 channels, the stream has 4" in problem
        assert daemon.proc.poll() is None

        # SIGTERM: STOPPING=1
        rc, _ = daemon.terminate()
        assert rc == 0
        wait_until(lambda: any(m.startswith("STOPPING=1") for _, m in notify.drain()), 2, "STOPPING=1")
    finally:
        sub.close()
        daemon.stop()
        if replay is not None:
            replay.close()
        if sim is not None:
            sim.stop()
        notify.close()


def test_a_model_that_does_not_match_the_stream_is_refused_at_start(tmp_path, model):
    """... before the orthosis port is opened: no HELLO reaches the device (issue 14: it did)."""
    from rig.replay import Replay

    name = unique_name()
    replay = Replay(np.zeros((400, 8)), None, 100.0, name=name, loop=True).start()
    sim = Sim(tmp_path)
    try:
        daemon = Daemon(tmp_path, stream=name, port=str(sim.link), model=model)
        try:
            rc = daemon.proc.wait(30)
            daemon._reader.join(2)
            stderr = daemon.proc.stderr.read()
        finally:
            daemon.stop()
    finally:
        replay.close()
        sim.stop()
    assert sim.log.events("hello") == [] and sim.log.events("command") == []
    assert rc == 2
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: refusing to start: stream '{name}' (8 channels, 100 Hz, float32")
    assert lines[0].endswith(f": the model expects 200 Hz, the stream's nominal rate is 100 Hz (model {model})")
    assert daemon.events("stream_mismatch") and daemon.events("stopped")[0]["exit_code"] == 2
