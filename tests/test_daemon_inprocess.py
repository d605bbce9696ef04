"""The daemon in this test's own process: its parts injected (``Controller(source=...)``), the rest
real. The packaged default model in onnxruntime, the signal chain, the policy, the wire codec
and the device state machine of the orthosis simulator (``firmware_protocol.device.Device``)
on an in-process ``loop://`` transport, the monitor and control sockets on real ZeroMQ. Only the
armband is replaced: a source that hands the daemon samples and LSL timestamps the test makes,
so the hot path runs faster than real time and without LSL discovery.

What needs the whole process (signals, systemd, LSL, the pty, restarts) is in test_controller_*.py
and test_faults.py."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from controller.config import Config, RealtimeConfig, SessionConfig
from controller.control import ControlClient
from controller.daemon import Controller
from controller.source import BATCH_MAX_S, LslSource
from firmware_protocol.codec import Decoder, encode
from firmware_protocol.device import Device, DeviceConfig
from firmware_protocol.errors import LinkError
from firmware_protocol.messages import Command, Stop, StopReason
from firmware_protocol.transport import open_transport
from metaemg.lsl import StreamDesc, identity
from metaemg.modelfile import OnnxModel, default_model_path

RATE = 200.0
CHUNK = 10  # samples per push: 50 ms of EMG


class FeedSource(LslSource):
    """The armband source without LSL: :meth:`push` delivers samples as the reader thread would."""

    def __init__(self, *args, desc: StreamDesc, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.desc = desc

    def start(self) -> None:  # what the reader thread does when it finds one matching stream
        problem = self._check(self.desc)
        if problem is not None:
            self._event("mismatch", problem)
            return
        self.stream, self.connected, self.problem = self.desc, True, None
        self.bound = identity(self.desc)
        self._event("connected", self.desc)

    def stop(self, timeout: float = 0.3) -> None:
        self.connected = False

    def push(self, samples: np.ndarray, stamps: np.ndarray) -> None:
        self._deliver(np.asarray(samples, dtype=np.float64), np.asarray(stamps, dtype=np.float64), time.monotonic_ns())


class DeviceThread:
    """The simulator's device state machine answering on one end of a named ``loop://`` pair."""

    def __init__(self, url: str) -> None:
        self.transport = open_transport(url)  # the daemon's Link opens the other end
        self.received: list = []  # every message from the host, in order
        self.events: list[tuple[str, dict]] = []  # the device's own log (state changes, faults)
        self.device = Device(DeviceConfig(), emit=lambda event, fields=None: self.events.append((event, fields or {})))
        self.decoder = Decoder(on_error=lambda exc: self.device.rx_error(exc.kind))
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="device", daemon=True)
        self._thread.start()

    def _send(self, messages: list) -> None:
        for msg in messages:
            self.transport.write(encode(msg))

    def _run(self) -> None:
        try:
            self._send(self.device.boot(time.monotonic()))
            while not self._halt.is_set():
                data = self.transport.read(timeout=0.005)
                now = time.monotonic()
                for msg in self.decoder.feed(data) if data else ():
                    self.received.append(msg)
                    self._send(self.device.receive(msg, now))
                self._send(self.device.tick(now))
        except LinkError:  # the daemon closed its end (it stopped): unplugged, read or write alike
            return

    def of_type(self, kind: type) -> list:
        return [m for m in list(self.received) if isinstance(m, kind)]

    def close(self) -> None:
        self._halt.set()
        self._thread.join(2)
        self.transport.close()


async def wait_for(predicate, timeout: float, what: str, poll: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(poll)


class Harness:
    """One in-process daemon on the default model, its device, and an armband fed from ``emg``."""

    def __init__(
        self,
        tmp: Path,
        emg: np.ndarray,
        *,
        rate: float = RATE,
        auto_model: bool = False,
        stale_ms: float = 100.0,
        sessions: Path | None = None,
    ) -> None:
        """``auto_model``: no model named (``model.path`` null): the packaged one that fits the
        stream; ``sessions``: a state directory, sessions per patient (``session.state_dir``)."""
        self.tmp = tmp
        self.model = tmp / "model.onnx"
        shutil.copy(default_model_path(), self.model)
        url = f"loop://orthosis-{uuid.uuid4().hex[:8]}"
        self.device = DeviceThread(url)
        model = None if auto_model else str(self.model)
        cfg = Config().with_overrides(serial_port=url, model=model, monitor=f"ipc://{tmp}/run/monitor.sock")
        # in this test's process: neither real-time scheduling nor a frozen heap for the test runner
        cfg = dataclasses.replace(
            cfg,
            realtime=RealtimeConfig(priority=0, freeze_gc=False),
            policy=dataclasses.replace(cfg.policy, stale_ms=stale_ms),
            session=SessionConfig(None if sessions is None else str(sessions)),
        )
        desc = StreamDesc("EMG", "EMG", "armband-1", "localhost", "uid-1", emg.shape[1], rate, "float32")
        self.rate = rate
        self.source: FeedSource | None = None

        def make_source(*args, **kwargs) -> FeedSource:
            self.source = FeedSource(*args, desc=desc, **kwargs)
            return self.source

        self.endpoint = f"ipc://{tmp}/run/control.sock"
        self.ctrl = Controller(cfg, control_endpoint=self.endpoint, source=make_source)
        self.emg = emg
        self.sent = 0  # samples pushed so far
        self.t0 = time.monotonic()

    def push(self, seconds: float, chunk: int = CHUNK) -> None:
        """``seconds`` of EMG at once, stamped as if they had arrived at 200 Hz, ``chunk`` samples
        per delivery."""
        assert self.source is not None
        n = int(seconds * self.rate)
        for start in range(self.sent, self.sent + n, chunk):
            idx = np.arange(start, min(start + chunk, self.sent + n))
            self.source.push(self.emg[idx % len(self.emg)], self.t0 + idx / self.rate)
        self.sent += n

    async def feed_until(self, predicate, timeout: float, what: str):
        """Push 50 ms of EMG per 10 ms until ``predicate`` holds (5x real time: the rate is
        measured from the timestamps, staleness from arrival, so both stay satisfied)."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            self.push(0.05)
            await asyncio.sleep(0.01)
        return value

    async def ctl(self, **req) -> dict:
        def call() -> dict:
            with ControlClient(self.endpoint, timeout_s=5) as client:
                return client.request(req)

        return await asyncio.to_thread(call)

    def state(self) -> str:
        return self.ctrl.sm.state.value


@pytest.fixture
def emg() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((4000, 8)) * 20).astype(np.float32)


def run(tmp_path: Path, emg: np.ndarray, scenario, **harness) -> dict:
    """Run the daemon and ``scenario(harness)`` in one event loop; stop the daemon after it."""
    h = Harness(tmp_path, emg, **harness)

    async def main() -> dict:
        task = asyncio.create_task(h.ctrl.run())
        try:
            await wait_for(lambda: h.source is not None or task.done(), 10, "the daemon to start its source")
            assert not task.done(), task.result()
            result = await scenario(h)
        finally:
            h.ctrl.request_stop("test over")
            code = await asyncio.wait_for(task, 10)
        result["exit_code"] = code
        return result

    # As the daemon does after start-up (controller/realtime.py): the test runner's heap collected
    # once and frozen, or one collection of it stalls the hot path for half a second, longer than
    # the device's silence limit. Not unfrozen after: that would also thaw what conftest.py froze.
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(main())
    finally:
        h.device.close()


def test_hot_path_decides_every_window_and_commands_the_device(tmp_path, emg):
    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running")
        c = h.ctrl.counters
        decided, commands = c["decisions"], len(h.device.of_type(Command))
        await h.feed_until(lambda: c["decisions"] >= decided + 40, 5, "40 more decisions")
        out = {"decisions": c["decisions"] - decided, "commands": len(h.device.of_type(Command)) - commands}
        out["windows_accounted"] = c["windows"] == c["decisions"] + c["skipped_windows"]
        skipped, decisions = c["skipped_windows"], c["decisions"]
        h.push(2.0, chunk=400)  # a 2-s backlog drained as one chunk: the newest window decided, 39 skipped
        out["backlog"] = (c["skipped_windows"] - skipped, c["decisions"] - decisions)
        out["status"] = (await h.ctl(cmd="status"))["status"]
        out["device_commands"] = sum(e == "command" for e, _ in h.device.events)
        return out

    r = run(tmp_path, emg, scenario)
    assert r["decisions"] >= 40 and r["commands"] >= 40  # serial.send_every_decision: a COMMAND per window
    assert r["windows_accounted"] and r["device_commands"] >= r["commands"]  # the device acted on each
    assert r["backlog"] == (39, 1)
    assert r["status"]["state"] == "running" and r["status"]["input"]["stream"]["source_id"] == "armband-1"
    assert r["exit_code"] == 0


def test_the_hot_path_in_its_own_thread_beside_control_requests_and_model_swaps(tmp_path, emg):
    """As in the daemon: the chunks come from another thread (the reader's), while the loop
    answers control requests, swaps models and runs its timers; the lock keeps them apart: every
    request answered, every window accounted for, no internal error, commands again at the end."""

    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running")
        stop, errors = threading.Event(), []

        def feed() -> None:  # 50 ms of EMG every 10 ms (5x real time), from this thread
            try:
                while not stop.is_set():
                    h.push(0.05)
                    stop.wait(0.01)
            except Exception as exc:  # reported below: a test thread must not die silently
                errors.append(exc)

        feeder = threading.Thread(target=feed, name="feeder")
        feeder.start()
        try:
            other = h.tmp / "other.onnx"
            shutil.copy(default_model_path(), other)
            answers = []
            for i in range(8):
                for req in ({"cmd": "status"}, {"cmd": "pause"}, {"cmd": "resume"}):
                    answers.append(await h.ctl(**req))
                answers.append(await h.ctl(cmd="reload", path=str(other if i % 2 else h.model)))
            await wait_for(lambda: h.state() == "running", 5, "running after the last resume")
            n = len(h.device.of_type(Command))
            await wait_for(lambda: len(h.device.of_type(Command)) > n + 5, 5, "commands after the requests")
        finally:
            stop.set()
            feeder.join(5)
        with h.ctrl._lock:  # a consistent snapshot: the feeder's last chunk is complete
            c = dict(h.ctrl.counters)
        return {"answers": answers, "errors": errors, "counters": c}

    r = run(tmp_path, emg, scenario)
    assert r["errors"] == [] and r["exit_code"] == 0
    assert len(r["answers"]) == 32 and all(a["ok"] for a in r["answers"]), [a for a in r["answers"] if not a["ok"]]
    c = r["counters"]
    assert c["reloads_ok"] == 8 and "reloads_failed" not in c and "model_errors" not in c
    assert c["windows"] == c["decisions"] + c.get("skipped_windows", 0) and c["decisions"] > 5


def test_the_reader_never_sleeps_longer_than_a_quarter_of_the_stale_time(tmp_path, emg):
    """Between windows the reader sleeps (controller/source.py); a sleep longer than
    policy.stale_ms would look like an armband gone silent."""

    async def scenario(h: Harness) -> dict:
        return {"batch_max_s": h.source.batch_max_s}

    (tmp_path / "default").mkdir()
    assert run(tmp_path, emg, scenario, stale_ms=20)["batch_max_s"] == 0.005
    assert run(tmp_path / "default", emg, scenario)["batch_max_s"] == BATCH_MAX_S  # 100 ms / 4 is above the cap


def test_control_pause_resume_and_an_unknown_command(tmp_path, emg):
    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running")
        out = {"bogus": await h.ctl(cmd="bogus"), "extra": await h.ctl(cmd="pause", path="x")}
        out["state_after_bogus"] = h.state()
        out["pause"] = await h.ctl(cmd="pause")
        stops = await h.feed_until(
            lambda: [m for m in h.device.of_type(Stop) if m.reason == StopReason.OPERATOR], 3, "STOP (operator)"
        )
        n = len(h.device.of_type(Command))
        h.push(1.0)
        await h.feed_until(lambda: h.ctrl.counters["decisions"] > 0 and h.state() == "paused", 3, "paused")
        out["commands_while_paused"] = len(h.device.of_type(Command)) - n
        out["stops"] = len(stops)
        out["resume"] = await h.ctl(cmd="resume")
        await h.feed_until(lambda: len(h.device.of_type(Command)) > n, 5, "commands after resume")
        return out

    r = run(tmp_path, emg, scenario)
    # an unknown command is an error and changes nothing: never a stop
    assert r["bogus"]["ok"] is False and "bogus" in r["bogus"]["error"] and r["state_after_bogus"] == "running"
    assert r["extra"] == {"ok": False, "error": "pause: unexpected field(s) path"}
    assert r["pause"]["ok"] is True and r["stops"] >= 1 and r["commands_while_paused"] == 0
    assert r["resume"]["ok"] is True and r["exit_code"] == 0


def test_reload_keeps_the_good_model_for_a_bad_file_and_takes_a_good_one(tmp_path, emg):
    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running")
        first = h.ctrl.model
        garbage = h.tmp / "garbage.onnx"
        garbage.write_bytes(b"not a model" * 50)
        out = {"garbage": await h.ctl(cmd="reload", path=str(garbage)), "kept": h.ctrl.model is first}
        h.push(0.5)
        out["state_after_garbage"] = await h.feed_until(lambda: h.state() == "running" and h.state(), 3, "running")
        other = h.tmp / "other.onnx"
        shutil.copy(default_model_path(), other)
        out["good"] = await h.ctl(cmd="reload", path=str(other))
        out["swapped"] = h.ctrl.model is not first and h.ctrl.model_path == other
        decided = h.ctrl.counters["decisions"]
        await h.feed_until(lambda: h.ctrl.counters["decisions"] > decided + 5, 5, "decisions of the new model")
        return out

    r = run(tmp_path, emg, scenario)
    assert r["garbage"]["ok"] is False and "garbage.onnx" in r["garbage"]["error"] and "\n" not in r["garbage"]["error"]
    assert r["kept"] and r["state_after_garbage"] == "running"
    assert r["good"]["ok"] is True and r["swapped"]
    assert r["good"]["model_id"] == OnnxModel(default_model_path()).info.model_id


def test_a_stream_that_does_not_fit_the_model_is_refused_before_the_port_opens(tmp_path):
    async def scenario(h: Harness) -> dict:
        return {}

    h_emg = np.zeros((400, 4), dtype=np.float32)  # 4 channels: the model expects 8
    with pytest.raises(Exception, match="the model expects 8 channels, the stream has 4"):
        run(tmp_path, h_emg, scenario)


@pytest.fixture(scope="module")
def packaged(myo_src, tmp_path_factory) -> Path:
    """A directory of packaged models: the default Myo one and one for a 100 Hz armband."""
    from rig.models import myo_recording, train_model

    d = tmp_path_factory.mktemp("packaged")
    shutil.copy(default_model_path(), d / default_model_path().name)
    train_model(d / "myhand_meta.onnx", [myo_recording(myo_src, "Male13", "training0")], steps=1, rate=100.0)
    return d


def test_without_a_model_the_packaged_one_that_fits_the_stream_is_chosen(tmp_path, emg, packaged, monkeypatch):
    import functools

    import controller.daemon
    from metaemg.modelfile import shipped_model_for

    monkeypatch.setattr(
        controller.daemon, "shipped_model_for", functools.partial(shipped_model_for, directory=packaged)
    )

    async def scenario(h: Harness) -> dict:
        await h.feed_until(lambda: h.state() == "running", 10, "running on the 100 Hz model")
        return {"path": h.ctrl.model_path, "status": (await h.ctl(cmd="status"))["status"]}

    async def nothing(h: Harness) -> dict:
        return {}

    r = run(tmp_path, emg, scenario, rate=100.0, auto_model=True)
    assert r["path"] == packaged / "myhand_meta.onnx" and r["status"]["model"]["sample_rate"] == 100.0
    assert r["exit_code"] == 0
    with pytest.raises(Exception, match=r"no packaged model fits a stream of 8 channels at 50 Hz \(packaged: myo_meta"):
        (tmp_path / "b").mkdir()
        run(tmp_path / "b", emg, nothing, rate=50.0, auto_model=True)
