"""The daemon's small parts with real sockets: sd_notify datagrams, the ZeroMQ monitor and control
sockets, the input pipeline against the offline signal chain, the state table."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import time

import numpy as np
import pytest
import zmq
import zmq.asyncio

from controller.config import MonitorConfig
from controller.control import ControlError, ControlServer, request
from controller.monitor import SCHEMA, Monitor
from controller.pipeline import NONFINITE, SATURATED, Pipeline, SaturationMonitor, check_stream
from controller.sdnotify import Notifier
from controller.source import BATCH_MARGIN, BATCH_MAX_S, batch_wait
from controller.states import Conditions, DaemonState, StateMachine, derive
from firmware_protocol import StopReason
from metaemg.errors import ConfigError
from metaemg.signal import SignalSpec, Windower, condition, make_windows
from rig.processes import BIN

# -- sd_notify --------------------------------------------------------------------------------------


def _receiver(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(2)
    return sock


def test_sd_notify_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with _receiver(path) as rx:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert n.enabled and n.watchdog_s == 4.0
        assert n.ready("running")
        assert rx.recv(4096) == b"READY=1\nSTATUS=running"
        assert n.watchdog() and rx.recv(4096) == b"WATCHDOG=1"
        assert n.status("stale: no samples\nfor 100 ms") and rx.recv(4096) == b"STATUS=stale: no samples for 100 ms"
        assert n.stopping() and rx.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
        n.close()


def test_sd_notify_abstract_socket():
    name = f"metaemg-test-{os.getpid()}-{time.monotonic_ns()}"
    with _receiver("\0" + name) as rx:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.notify(STATUS="x")
        assert rx.recv(4096) == b"STATUS=x"
        n.close()


def test_sd_notify_outside_systemd_and_watchdog_for_another_pid():
    n = Notifier({})
    assert not n.enabled and not n.ready("x") and n.watchdog_s is None
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert n.watchdog_s is None  # the watchdog is someone else's
    assert not n.watchdog() and n.errors == 1  # a vanished socket is counted, never raised
    n.close()


# -- monitor ----------------------------------------------------------------------------------------


def test_monitor_publishes_topic_and_json_frames(tmp_path):
    ctx = zmq.Context()
    mon = Monitor(MonitorConfig(endpoint=f"ipc://{tmp_path}/mon.sock"), ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(mon.endpoint)
    try:
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:  # a SUB joins asynchronously
            mon.publish("decision", {"x": 1})
            mon.publish("status", {"state": "running", "p": float("nan")})
            if sub.poll(20):
                got = sub.recv_multipart()
        assert got is not None
        topic, body = got
        msg = json.loads(body)
        assert topic == b"status" and msg["schema"] == SCHEMA and msg["topic"] == "status"
        assert msg["state"] == "running" and msg["p"] is None  # NaN becomes null: valid JSON
        assert abs(msg["t_wall"] - time.time()) < 5 and abs(msg["t_mono"] - time.monotonic()) < 5
    finally:
        sub.close(0)
        mon.close()
        ctx.term()
    assert not (tmp_path / "mon.sock").exists()


def test_monitor_bind_failure_is_a_config_error():
    ctx = zmq.Context()
    blocker = ctx.socket(zmq.PUB)
    port = blocker.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConfigError, match=f"monitor endpoint tcp://127.0.0.1:{port}: cannot bind"):
            Monitor(MonitorConfig(endpoint=f"tcp://127.0.0.1:{port}"), ctx)
    finally:
        blocker.close(0)
        ctx.term()


# -- control ----------------------------------------------------------------------------------------


def test_control_socket_is_0600_answers_and_refuses_a_second_daemon(tmp_path):
    endpoint = f"ipc://{tmp_path}/run/control.sock"
    seen = []

    async def handler(req):
        seen.append(req)
        return {"ok": True, "echo": req["cmd"]}

    async def main():
        ctx = zmq.asyncio.Context()
        server = ControlServer(endpoint, ctx, handler)
        task = asyncio.get_running_loop().create_task(server.serve())
        try:
            mode = stat.S_IMODE(os.stat(server.path).st_mode)
            ok = await asyncio.to_thread(request, endpoint, {"cmd": "pause"})
            bad = await asyncio.to_thread(request, endpoint, {"cmd": "dance"})
            not_obj = await asyncio.to_thread(request, endpoint, ["status"])
            with pytest.raises(ConfigError, match="another myhand-controller answers there"):
                await asyncio.to_thread(ControlServer, endpoint, ctx, handler)
            return mode, ok, bad, not_obj
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            ctx.term()

    mode, ok, bad, not_obj = asyncio.run(main())
    assert mode == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
    assert ok == {"ok": True, "echo": "pause"}
    assert seen == [{"cmd": "pause"}, {"cmd": "status"}]  # the second daemon asked first
    assert bad["ok"] is False and "unknown cmd 'dance'" in bad["error"]
    assert not_obj["ok"] is False and '"cmd" string' in not_obj["error"]
    assert not (tmp_path / "run" / "control.sock").exists()


def test_a_slow_request_never_delays_pause_or_stop(tmp_path):
    """A reload that takes long (a large model file) is answered when it is done; a pause sent
    meanwhile from another client is answered at once (one task per request)."""
    endpoint = f"ipc://{tmp_path}/control.sock"
    released = asyncio.Event()
    order = []

    async def handler(req):
        if req["cmd"] == "reload":
            await released.wait()
        order.append(req["cmd"])
        return {"ok": True, "cmd": req["cmd"]}

    async def main():
        ctx = zmq.asyncio.Context()
        server = ControlServer(endpoint, ctx, handler)
        task = asyncio.get_running_loop().create_task(server.serve())
        try:
            slow = asyncio.create_task(
                asyncio.to_thread(request, endpoint, {"cmd": "reload", "path": "/x"}, timeout_s=10)
            )
            while server.requests < 1:
                await asyncio.sleep(0.001)
            paused = await asyncio.to_thread(request, endpoint, {"cmd": "pause"}, timeout_s=2)
            released.set()  # only now may the reload finish
            return paused, await slow
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            ctx.term()

    paused, reloaded = asyncio.run(main())
    assert paused == {"ok": True, "cmd": "pause"} and reloaded == {"ok": True, "cmd": "reload"}
    assert order == ["pause", "reload"]


def test_oversized_deep_or_broken_requests_get_an_error_and_the_server_goes_on(tmp_path):
    from controller.control import MAX_DEPTH, parse_request

    endpoint = f"ipc://{tmp_path}/control.sock"

    async def handler(req):
        return {"ok": True}

    def raw(payload: bytes) -> dict:
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(endpoint)
            sock.send(payload)
            assert sock.poll(3000), "no answer"
            return json.loads(sock.recv())
        finally:
            sock.close(0)

    async def main():
        ctx = zmq.asyncio.Context()
        server = ControlServer(endpoint, ctx, handler)
        task = asyncio.get_running_loop().create_task(server.serve())
        try:
            deep = await asyncio.to_thread(raw, b"[" * 30000 + b"]" * 30000)  # 60 kB: RecursionError in json
            # json parses 900 levels; measuring that depth recursively crashed too (found by bench.fuzz)
            parsed_deep = await asyncio.to_thread(raw, b"[" * 900 + b"]" * 900)
            nested = await asyncio.to_thread(raw, json.dumps({"cmd": "cue", "cue": {"a": [[[[[[[[1]]]]]]]]}}).encode())
            binary = await asyncio.to_thread(raw, b"\xff\xfe")
            status = await asyncio.to_thread(request, endpoint, {"cmd": "status"})
            return deep, parsed_deep, nested, binary, status
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            server.close()
            ctx.term()

    deep, parsed_deep, nested, binary, status = asyncio.run(main())
    assert deep == parsed_deep == {"ok": False, "error": f"a request is nested at most {MAX_DEPTH} levels deep"}
    assert nested["ok"] is False and "nested" in nested["error"]
    assert binary["ok"] is False and status == {"ok": True}
    assert parse_request(json.dumps({"cmd": "cue", "cue": {"cue": "open", "index": 1}}).encode())["cmd"] == "cue"


def test_the_daemon_dispatches_exactly_the_protocol_commands():
    from controller.config import Config
    from controller.control import COMMANDS
    from controller.daemon import Controller

    assert tuple(Controller(Config())._control_table()) == COMMANDS


def test_a_leftover_control_socket_is_replaced(tmp_path):
    path = tmp_path / "control.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # a socket file nobody answers on (a killed daemon)
    leftover.close()

    async def main():
        ctx = zmq.asyncio.Context()
        server = ControlServer(f"ipc://{path}", ctx, lambda req: None)
        server.close()
        ctx.term()

    asyncio.run(main())
    with pytest.raises(ControlError, match="no control socket"):
        request(f"ipc://{path}", {"cmd": "status"})


# -- pipeline ---------------------------------------------------------------------------------------

SPEC = SignalSpec.myo()


def test_pipeline_windows_match_the_offline_chain_in_any_chunking():
    rng = np.random.default_rng(1)
    raw = rng.integers(-60, 60, (1000, 8)).astype(np.float64)
    offline, ends = make_windows(condition(raw, SPEC), SPEC.window, SPEC.stride)
    pipe = Pipeline(SPEC)
    got, got_ends, skipped = [], [], 0
    i = 0
    for size in rng.integers(1, 40, 200):
        chunk = raw[i : i + size]
        i += size
        if not len(chunk):
            break
        assert pipe.check(chunk) is None
        window, end, skip = pipe.push(chunk)
        skipped += skip
        if window is not None:
            got.append(window[0])
            got_ends.append(end)
    # only the newest window of each chunk is returned; the others are counted as skipped
    assert len(got) + skipped == len(ends)
    index = {int(e): k for k, e in enumerate(ends)}
    for window, end in zip(got, got_ends, strict=True):
        np.testing.assert_allclose(window, offline[index[end]], rtol=1e-12, atol=1e-12)
    assert got_ends[-1] == ends[-1]


def test_pipeline_flags_nonfinite_and_saturated_input():
    pipe = Pipeline(SPEC, saturation_fraction=0.2)
    quiet = np.zeros((50, 8))
    assert pipe.check(quiet) is None
    nan = quiet.copy()
    nan[3, 2] = np.nan
    assert pipe.check(nan) == NONFINITE
    rail = quiet[:11].copy()
    rail[:, 0] = 127  # 11 of the last 50 samples at the rail: 22 %
    assert pipe.check(rail) == SATURATED and pipe.saturated_fraction == pytest.approx(0.22)
    assert pipe.check(quiet[:39]) is SATURATED  # still 11 of the last 50
    assert pipe.check(quiet[:1]) is None  # 10 of 50 = 20 %: not more than the limit
    one = quiet[:1].copy()
    one[0, 5] = -128
    assert Pipeline(SPEC).check(one) is None  # a single spike at the rail is not saturation


def test_saturation_monitor_ring():
    mon = SaturationMonitor(4)
    assert mon.push(np.array([True, False])) == 0.25
    assert mon.push(np.array([True, True, False])) == 0.5  # last four: F T T F
    assert mon.push(np.array([True] * 9)) == 1.0
    mon.reset()
    assert mon.push(np.array([False])) == 0.0


def test_saturation_monitor_counts_the_last_n_flags_for_any_chunking():
    rng = np.random.default_rng(3)
    flags = rng.random(500) < 0.3
    mon, i = SaturationMonitor(7), 0
    while i < len(flags):
        k = int(rng.choice([1, 1, 1, 2, 5, 9]))  # mostly the live path: one sample per chunk
        chunk = flags[i : i + k]
        got = mon.push(chunk)
        i += len(chunk)
        assert got == flags[max(0, i - 7) : i].sum() / 7, i


def test_check_stream_messages():
    assert check_stream(200.0, 8, 200.0, 8) is None
    assert check_stream(200.0, 8, 205.0, 8) is None
    assert check_stream(200.0, 8, 200.0, 4) == "the model expects 8 channels, the stream has 4"
    assert check_stream(200.0, 8, 100.0, 8) == "the model expects 200 Hz, the stream's nominal rate is 100 Hz"
    assert check_stream(200.0, 8, 0.0, 8) is not None  # irregular-rate streams are refused


# -- states -----------------------------------------------------------------------------------------


def test_state_precedence_and_transitions():
    ok = Conditions(link_ready=True, stream_connected=True, armed=True)
    assert derive(ok) == (DaemonState.RUNNING, None)
    assert derive(Conditions(**{**_fields(ok), "armed": False, "input_problem": "stale"})) == (
        DaemonState.STALE,
        "stale",
    )
    assert derive(Conditions(**{**_fields(ok), "paused": True})) == (DaemonState.PAUSED, "operator")
    assert derive(Conditions(**{**_fields(ok), "stream_connected": False})) == (
        DaemonState.WAITING_FOR_STREAM,
        "resolving",
    )
    assert derive(Conditions(**{**_fields(ok), "link_ready": False, "link_problem": "x"})) == (
        DaemonState.WAITING_FOR_LINK,
        "x",
    )
    assert derive(Conditions(**{**_fields(ok), "fault": "device fault: stall", "paused": True}))[0] == DaemonState.FAULT
    assert derive(Conditions(**{**_fields(ok), "stopping": True, "fault": "x"}))[0] == DaemonState.STOPPING
    sm = StateMachine(0.0)
    tr = sm.update(ok, 1.0)
    assert (tr.prev, tr.state, tr.t) == (DaemonState.STARTING, DaemonState.RUNNING, 1.0)
    assert sm.update(ok, 2.0) is None and sm.changes == 1


def test_every_state_but_running_has_a_stop_reason():
    from controller.states import STOP_REASONS

    assert set(STOP_REASONS) == set(DaemonState) - {DaemonState.RUNNING}
    assert STOP_REASONS[DaemonState.STOPPING] == StopReason.HOST_SHUTDOWN
    assert STOP_REASONS[DaemonState.STALE] == StopReason.SIGNAL_LOST
    assert STOP_REASONS[DaemonState.PAUSED] == StopReason.OPERATOR


def _fields(c: Conditions) -> dict:
    return {name: getattr(c, name) for name in c.__slots__}


def test_a_control_socket_directory_other_users_control_is_refused(tmp_path, monkeypatch):
    """issue 14: another user created the fallback /tmp/myhand-<uid> 0777 and put a control socket
    of their own in it: ctl pause answered "paused" while the hand kept moving. The daemon refuses
    to bind there, and every client (ctl, calibration) refuses to talk there."""
    from controller.control import check_socket_dir

    shared = tmp_path / "myhand-0"
    shared.mkdir()
    shared.chmod(0o777)
    endpoint = f"ipc://{shared}/control.sock"

    async def handler(req):
        return {"ok": True, "state": "paused"}  # what the impostor answers

    async def bind():
        ctx = zmq.asyncio.Context()
        try:
            ControlServer(endpoint, ctx, handler)
        finally:
            ctx.term()

    with pytest.raises(
        ConfigError,
        match=rf"control socket directory {shared} is writable by other users "
        r"\(mode 0777\): refusing to use it; run: chmod go-w",
    ):
        asyncio.run(bind())
    (shared / "control.sock").touch()  # the impostor's socket
    with pytest.raises(ConfigError, match="is writable by other users"):
        request(endpoint, {"cmd": "pause"})
    proc = subprocess.run(
        [str(BIN / "myhand-controller"), "ctl", "--control", endpoint, "pause"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: control socket directory {shared} is writable by other users")
    # a directory that is not ours (nor root's), even if not writable by others
    shared.chmod(0o755)
    assert check_socket_dir(endpoint) is True  # ours, 0755: trusted
    if os.geteuid() == 0:  # root (as in CI here) can give it away for real
        os.chown(shared, 4242, -1)
    else:  # otherwise: this process pretends to be another user
        monkeypatch.setattr(os, "getuid", lambda: os.stat(shared).st_uid + 4242)
    with pytest.raises(ConfigError, match=rf"{shared} belongs to uid \d+, not to this user"):
        check_socket_dir(endpoint)
    link = tmp_path / "link"
    link.symlink_to(shared)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        check_socket_dir(f"ipc://{link}/control.sock")


def test_a_monitor_socket_directory_or_a_parent_other_users_control_is_refused(tmp_path):
    """Issue 25, finding 7: the console and metaemg-monitor connected to the monitor socket without
    the control socket's directory check, and that check looked at the last directory only. Now one
    rule for both sockets, and for every directory above (a parent writable by others, not sticky,
    lets them put a directory of their own in its place)."""
    from metaemg.trust import check_socket_dir

    parent = tmp_path / "shared"
    runtime = parent / "myhand"
    runtime.mkdir(parents=True, mode=0o700)
    (runtime / "monitor.sock").touch()
    endpoint = f"ipc://{runtime}/monitor.sock"
    assert check_socket_dir(endpoint, "monitor socket directory") is True
    parent.chmod(0o777)
    refusal = rf"monitor socket directory {runtime}: the directory above it, {parent}, is writable by other users"
    with pytest.raises(ConfigError, match=refusal):
        check_socket_dir(endpoint, "monitor socket directory")
    for tool in (["metaemg-monitor", "--monitor", endpoint, "--once"], ["metaemg-console", "--monitor", endpoint]):
        proc = subprocess.run([str(BIN / tool[0]), *tool[1:]], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2 and proc.stdout == "", (tool, proc.stderr)
        assert proc.stderr.startswith(f"error: monitor socket directory {runtime}: the directory above"), proc.stderr
    parent.chmod(0o1777)  # sticky, as /tmp: others may add entries but not rename ours
    assert check_socket_dir(endpoint, "monitor socket directory") is True
    runtime.chmod(0o777)
    with pytest.raises(ConfigError, match=rf"monitor socket directory {runtime} is writable by other users"):
        check_socket_dir(endpoint, "monitor socket directory")


def test_the_rate_monitor_measures_from_timestamps_and_waits_for_a_full_second():
    from controller.pipeline import RateMonitor

    mon = RateMonitor(200.0)
    t = np.arange(0, 3, 1 / 200)
    answers = [mon.push(t[i : i + 5]) for i in range(0, len(t), 5)]  # chunks of 5 samples
    first_ok = next(i for i, a in enumerate(answers) if a is None)
    assert all(a == "rate unknown" for a in answers[:first_ok])
    assert t[first_ok * 5 + 4] >= 1.0 - 1e-9  # not before a full second of samples
    assert all(a is None for a in answers[first_ok:]) and mon.rate == pytest.approx(200.0, rel=1e-6)
    slow = RateMonitor(200.0)  # announced 200 Hz, delivers 50
    t50 = np.arange(0, 2, 1 / 50)
    assert [slow.push(t50[i : i + 1]) for i in range(len(t50))][-1] == "measured 50 Hz, the stream says 200 Hz"
    fast = RateMonitor(200.0)  # delivers 800
    t800 = np.arange(0, 2, 1 / 800)
    assert fast.push(t800) == "measured 800 Hz, the stream says 200 Hz"
    # a change of rate is seen within a fraction of the window: 200 -> 800 Hz
    mon.reset()
    for i in range(0, len(t), 5):
        mon.push(t[i : i + 5])
    t_new = t[-1] + np.arange(1, 400) / 800
    seen = next(i for i in range(len(t_new)) if mon.push(t_new[i : i + 1]) is not None)
    assert (t_new[seen] - t[-1]) < 0.05
    # a late chunk (this process stalled) changes nothing: the timestamps are the sender's
    late = RateMonitor(200.0)
    assert late.push(np.arange(0, 1.5, 1 / 200)) is None


def test_the_reader_sleeps_until_the_last_samples_before_a_window():
    # 200 Hz, 10 samples to go: sleep for all but the last BATCH_MARGIN, capped at BATCH_MAX_S; the
    # last ones one by one
    assert batch_wait(10, 200.0) == min(BATCH_MAX_S, (10 - BATCH_MARGIN) / 200.0)
    assert batch_wait(6, 200.0) == (6 - BATCH_MARGIN) / 200.0 and batch_wait(3, 200.0) == (3 - BATCH_MARGIN) / 200.0
    assert batch_wait(2, 200.0) == batch_wait(1, 200.0) == batch_wait(None, 200.0) == batch_wait(10, 0.0) == 0.0
    assert batch_wait(10, 200.0, 0.005) == 0.005  # the daemon's cap: a quarter of policy.stale_ms (20 ms)
    w = Windower(50, 10, 8)
    needed = [w.samples_needed]
    for n in (49, 1, 4, 5, 23):
        w.push(np.zeros((n, 8)))
        needed.append(w.samples_needed)
    assert needed == [50, 1, 10, 6, 1, 8]


def test_the_reader_thread_hands_every_sample_on_in_order_in_its_own_thread():
    """Real LSL on loopback: the hot path is the reader thread; it reads nothing before the loop
    has handled "connected"; its sleeps between windows lose and reorder nothing."""
    import threading

    import pylsl

    from controller.config import LslConfig
    from controller.source import LslSource

    name = f"test-reader-{os.getpid()}-{time.monotonic_ns()}"
    outlet = pylsl.StreamOutlet(pylsl.StreamInfo(name, "EMG", 8, 200.0, pylsl.cf_float32, f"sid-{name}"))
    n = 120
    chunks: list[tuple[int, np.ndarray, np.ndarray, bool]] = []
    windower = Windower(50, 10, 8)
    events: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got_all = asyncio.Event()

        def on_data(x, stamps, t_recv):
            chunks.append((threading.get_native_id(), x, stamps, events == ["connected"]))
            windower.push(x)
            if sum(len(c[1]) for c in chunks) >= n:
                loop.call_soon_threadsafe(got_all.set)
            return windower.samples_needed

        source = LslSource(
            LslConfig(name=name), loop, check=lambda desc: None, on_data=on_data, on_event=lambda k, d: events.append(k)
        )
        source.start()
        try:
            while events != ["connected"]:
                await asyncio.sleep(0.01)
            for i in range(n):  # 200 Hz, as an armband
                outlet.push_sample(np.full(8, i, dtype=np.float32), 1000.0 + i / 200)
                await asyncio.sleep(0.005)
            await asyncio.wait_for(got_all.wait(), 10)
        finally:
            source.stop()
        assert {c[0] for c in chunks} == {source.thread_id} and source.thread_id != threading.get_native_id()

    asyncio.run(main())
    assert all(c[3] for c in chunks)  # each after "connected" was handled, never before
    values = np.concatenate([c[1][:, 0] for c in chunks])
    stamps = np.concatenate([c[2] for c in chunks])
    np.testing.assert_array_equal(values, np.arange(n))
    # clock sync (lsl.clock_sync) shifts every stamp by the same offset
    np.testing.assert_allclose(stamps - stamps[0], np.arange(n) / 200, rtol=0, atol=1e-9)


def test_a_port_that_opens_after_the_daemon_stopped_waiting_is_closed():
    """The daemon stops while its link is still opening the port (in a worker thread): the port
    is closed once it is open, not left open (nor to the garbage collector)."""
    import threading
    from collections import Counter

    from controller.config import SerialConfig
    from controller.link import Link
    from firmware_protocol.transport import LoopTransport

    entered, release, opened = threading.Event(), threading.Event(), []

    def opener(url, baudrate):
        entered.set()
        release.wait(5)
        a, b = LoopTransport.pair()
        opened.append((a, b))
        return a

    async def main() -> bool:
        link = Link(SerialConfig(port="loop://never"), Counter(), lambda: None, opener=opener)
        task = asyncio.create_task(link.run())
        assert await asyncio.to_thread(entered.wait, 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        deadline = time.monotonic() + 5
        while not (opened and opened[0][0].closed) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return bool(opened) and opened[0][0].closed and not link.is_open

    assert asyncio.run(main())
    opened[0][1].close()
