"""The rig: the chain's real processes, wrapped for demos, tests and benchmarks.

- :class:`Sim`: the orthosis simulator (``metaemg-sim orthosis``) on a pty behind a udev-like
  symlink, its JSON-lines log read incrementally (:class:`JsonLines`);
- :class:`Daemon`: ``myhand-controller`` with the four flags, a private control socket and a
  private monitor; its JSON log lines collected by a thread, or written to a file;
- :class:`Sub`: a ZeroMQ SUB socket on the daemon's monitor stream;
- :class:`Rig`: one of each, plus a replay outlet (:class:`rig.replay.Replay`, a thread in this
  process), up and ``running``; :meth:`Rig.close` stops them all.

Waiting is always a condition polled with a deadline (:func:`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from firmware_protocol.messages import StopReason

BIN = Path(sys.executable).parent  # the environment's console scripts


def command(script: str, module: str) -> list[str]:
    """The console script ``script`` of this environment, else ``python -m module``."""
    exe = BIN / script
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", module]


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str = "condition", poll: float | None = None
) -> Any:
    """Return the first truthy value of ``predicate()``; fail the test after ``timeout`` s.

    Polled every ``poll`` s; by default every 5 ms at first, backing off to every 50 ms: a
    predicate is often a request to another process (the daemon's status, the browser), and on
    2 cores polling a long wait every 5 ms takes a fifth of a core from the processes it waits on."""
    deadline = time.monotonic() + timeout
    pause = 0.005 if poll is None else poll
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(pause)
        if poll is None:
            pause = min(pause * 1.5, 0.05)


HARDWARE_PRIORITY = 10  # SCHED_FIFO, below the daemon's realtime.priority (20)


def keep_time_as_hardware() -> bool:
    """Run the calling thread under SCHED_FIFO where Linux grants it (root, or ``RLIMIT_RTPRIO``):
    a simulated armband then keeps time as a real one does, whatever else runs on the cores. Under
    the default policy, a busy machine (the test suite on two cores) now and then held its thread
    back for over 100 ms, and the daemon rightly held the hand (stale input). False if not granted."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(HARDWARE_PRIORITY))  # 0: this thread
    except (OSError, AttributeError):
        return False
    return True


def unique_name(prefix: str = "test-emg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def spawn(argv: list[str], output: Path | None = None, *, pipe_stdout: bool = False, **kwargs) -> subprocess.Popen:
    """Start a child: its output in the file ``output`` (stdout piped when ``pipe_stdout``), or
    both piped when ``output`` is None. ``start_new_session=True`` keeps Ctrl-C for the parent,
    which then stops its children in order (the demo)."""
    if output is None:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
    with open(output, "w", encoding="utf-8") as fh:
        return subprocess.Popen(argv, stdout=subprocess.PIPE if pipe_stdout else fh, stderr=fh, text=True, **kwargs)


def end_process(
    proc: subprocess.Popen, before_close: Callable[[], None] | None = None, timeout: float = 5.0
) -> int | None:
    """SIGTERM (SIGKILL after ``timeout`` s) if still running, then close its pipes; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if before_close is not None:
        before_close()  # e.g. join the thread that reads a pipe
    for stream in (proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    return proc.returncode


class JsonLines:
    """Reads a JSON-lines file incrementally (a log another process appends to)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self._partial = ""
        self.records: list[dict] = []

    def poll(self) -> list[dict]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self._pos)
                data = fh.read()
                self._pos = fh.tell()
        except FileNotFoundError:
            return []
        data = self._partial + data
        lines = data.split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.strip():
                with contextlib.suppress(ValueError):  # a line that is not JSON is not a record
                    new.append(json.loads(line))
        self.records += new
        return new

    def events(self, name: str) -> list[dict]:
        self.poll()
        return [r for r in self.records if r.get("event") == name]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        """The first record (old or new) for which ``predicate`` holds; each record is tested once."""
        checked = 0

        def find():
            nonlocal checked
            self.poll()
            records, start, checked = self.records, checked, len(self.records)
            return next((r for r in records[start:] if predicate(r)), None)

        return wait_until(find, timeout, what)


class Sim:
    """The orthosis simulator on a pty in ``tmp``: ``link`` a udev-like symlink to it, its event
    log ``sim.jsonl`` (:attr:`log`), its control socket ``sim.ctl``; its own output piped, or in
    the file ``output``."""

    def __init__(self, tmp: Path, *extra: str, output: Path | None = None, **popen) -> None:
        self.link = tmp / "myhand"
        self.log_path = tmp / "sim.jsonl"
        self.control = tmp / "sim.ctl"
        argv = [sys.executable, "-m", "firmware_protocol.cli", "orthosis", "--link", str(self.link)]
        argv += ["--log", str(self.log_path), "--control", str(self.control), *extra]
        self.proc = spawn(argv, output, pipe_stdout=True, **popen)
        assert self.proc.stdout is not None  # piped: the simulator prints its pty first
        self.pty = self.proc.stdout.readline().strip()
        if not self.pty.startswith("/dev/"):
            why = self.proc.stderr.read() if self.proc.stderr is not None else f"see {output}"
            raise RuntimeError(f"the orthosis simulator did not start: {why}")
        self.log = JsonLines(self.log_path)

    def send(self, **request) -> None:
        from firmware_protocol.simulator import send_control

        send_control(self.control, request)

    def stop(self) -> int | None:
        return end_process(self.proc)


def realtime(pid: int, priority: int) -> bool:
    """Put process ``pid`` (all its threads) under SCHED_FIFO at ``priority``; whether this
    machine granted it. For the stand-ins of what is not on the device PC's scheduler in a real
    setting (the orthosis's MCU) or is given real time there too (the armband's bridge)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True


def monitor_endpoint(tmp: Path) -> str:
    """The monitor stream of a rig's daemon in ``tmp`` (:class:`Daemon`)."""
    return f"ipc://{tmp}/monitor.sock"


class Daemon:
    """``myhand-controller`` with the four flags, a private control socket (``control``, default
    ``ipc://TMP/run/control.sock``) and a private monitor (``ipc://TMP/monitor.sock``). Its JSON log
    lines are collected by a thread (:attr:`lines`), or written to the file ``output``."""

    def __init__(
        self,
        tmp: Path,
        *,
        stream: str,
        port: str,
        model: Path,
        extra: tuple[str, ...] = (),
        env: dict | None = None,
        control: str | None = None,
        output: Path | None = None,
        **popen,
    ) -> None:
        self.monitor = monitor_endpoint(tmp)
        self.control = control or f"ipc://{tmp}/run/control.sock"
        self.output = output
        self.argv = [
            *command("myhand-controller", "controller"),
            "--lsl-stream",
            stream,
            "--serial-port",
            port,
            "--model",
            str(model),
            "--monitor",
            self.monitor,
            "--control",
            self.control,
            *extra,
        ]
        full_env = {**os.environ, **(env or {})}
        if "NOTIFY_SOCKET" not in (env or {}):
            full_env.pop("NOTIFY_SOCKET", None)  # never talk to a systemd we were started by
        self.proc = spawn(self.argv, output, env=full_env, **popen)
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        if self.proc.stdout is None:  # written to self.output
            return
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, name: str) -> list[dict]:
        return [r for r in list(self.lines) if r.get("event") == name]

    def _stderr(self) -> str:
        return self.proc.stderr.read() if self.proc.stderr is not None else f"(see {self.output})"

    def request(self, **req) -> dict:
        """One control request from this process (a real ZeroMQ REQ, like ``ctl``)."""
        from controller.control import request

        return request(self.control, req, timeout_s=5.0)

    def status(self) -> dict | None:
        """The daemon's status, or None while its control socket is not there yet."""
        from controller.control import ControlError

        try:
            return self.request(cmd="status")["status"]
        except ControlError:
            if self.proc.poll() is not None:
                self._reader.join(1)
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}): {self._stderr()}\n" + "".join(self.raw[-10:])
                ) from None
            return None

    def ctl(self, *words: str, timeout: float = 30.0) -> dict:
        """``myhand-controller ctl WORDS`` as a subprocess (the clinician's tool)."""
        proc = subprocess.run(
            [str(BIN / "myhand-controller"), "ctl", "--control", self.control, *words],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode in (0, 1), proc.stderr
        return json.loads(proc.stdout)

    def terminate(self, signum: int = signal.SIGTERM, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM (or ``signum``); returns (exit code, seconds until exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signum)
        rc = self.proc.wait(timeout)
        elapsed = time.monotonic() - t0
        self._reader.join(2)
        self.stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
        return rc, elapsed

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL after 5 s; the exit code."""
        return end_process(self.proc, before_close=lambda: self._reader.join(2))


class Sub:
    """A SUB socket on the monitor stream, all topics."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",)) -> None:
        import zmq

        self._zmq = zmq
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.sock.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.sock.connect(endpoint)
        self.messages: list[tuple[str, dict]] = []

    def drain(self, timeout_ms: int = 0) -> list[tuple[str, dict]]:
        new = []
        while self.sock.poll(timeout_ms):
            topic, body = self.sock.recv_multipart()
            new.append((topic.decode(), json.loads(body)))
            timeout_ms = 0
        self.messages += new
        return new

    def wait_for(self, predicate: Callable[[str, dict], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for topic, msg in self.drain(20):
                if predicate(topic, msg):
                    return msg
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


class Rig:
    """Simulator + replay outlet + daemon + monitor subscriber, all real (see the module doc)."""

    def __init__(
        self,
        tmp: Path,
        model: Path,
        emg: np.ndarray,
        *,
        rate: float = 200.0,
        udev: Path | None = None,
        daemon_args: tuple[str, ...] = (),
        sim_args: tuple[str, ...] = (),
        wait_running: float = 20.0,
        patient=None,
    ) -> None:
        """``patient``: a labelled recording; the armband is then a simulated patient
        (:class:`rig.patient.Patient`, :attr:`patient`) who follows the calibration's cues on the
        daemon's monitor stream and otherwise plays that recording, instead of a replay of ``emg``
        (:attr:`replay` is then None)."""
        from rig.replay import Replay

        self.tmp = tmp
        self.model = model
        self.emg = np.array(emg, dtype=np.float32)  # our own copy: tests may edit future rows
        self.rate = rate
        self.name = unique_name("fault-emg")
        try:  # each part is closed by close() once it exists
            self.sim = Sim(tmp, *sim_args)
            self.replay: Replay | None = None
            self.patient = None
            if patient is None:
                self.replay = Replay(self.emg, None, rate, name=self.name, loop=True).start()
            else:
                from rig.patient import Patient

                self.patient = Patient(patient, name=self.name, endpoints=[monitor_endpoint(tmp)]).start()
            self.port = str(self.sim.link)
            if udev is not None:  # a symlink of our own, moved by the test as udev would
                os.symlink(self.sim.pty, udev)
                self.port = str(udev)
            self.daemon = Daemon(tmp, stream=self.name, port=self.port, model=model, extra=daemon_args)
            self.sub = Sub(self.daemon.monitor)
            if wait_running:
                self.wait_state("running", wait_running)
                self.wait_command_after(time.monotonic(), 3.0)
        except BaseException:
            self.close()
            raise

    # -- the daemon ------------------------------------------------------------------------------

    def status(self) -> dict:
        return wait_until(self.daemon.status, 5, "a status answer")

    def wait_state(self, state: str, timeout: float) -> dict:
        def check():
            s = self.daemon.status()
            return s if s is not None and s["state"] == state else None

        return wait_until(check, timeout, f"daemon state {state!r}")

    def state_event(self, state: str, after: float, timeout: float) -> dict:
        """The monitor's ``event`` for entering ``state`` after monotonic time ``after``."""
        return self.sub.wait_for(
            lambda topic, m: (
                topic == "event" and m.get("event") == "state" and m.get("state") == state and m["t_mono"] > after
            ),
            timeout,
            f"state event {state!r}",
        )

    def decisions(self, after: float = -1.0) -> list[dict]:
        self.sub.drain()
        return [m for topic, m in self.sub.messages if topic == "decision" and m["t_mono"] > after]

    # -- the simulator log -----------------------------------------------------------------------

    def commands(self, after: float, before: float = float("inf"), sim: Sim | None = None) -> list[dict]:
        return [e for e in (sim or self.sim).log.events("command") if after < e["t"] < before]

    def wait_command_after(self, t: float, timeout: float, sim: Sim | None = None) -> dict:
        return (sim or self.sim).log.wait_for(
            lambda e: e["event"] == "command" and e["t"] > t, timeout, "a command at the simulator"
        )

    def wait_stop_after(self, t: float, timeout: float, reason: StopReason, sim: Sim | None = None) -> dict:
        """The first STOP with ``reason`` after ``t``. Another STOP may come first: under load a
        late ACK makes the host probe with STOP (host error), and the code orders nothing between
        the two."""
        return (sim or self.sim).log.wait_for(
            lambda e: e["event"] == "stop" and e["t"] > t and e["reason"] == reason,
            timeout,
            f"a STOP ({reason.name}) at the simulator",
        )

    def device_state(self, sim: Sim | None = None) -> str:
        return (sim or self.sim).log.events("state")[-1]["state"]

    def alive(self) -> bool:
        return self.daemon.proc.poll() is None and self.sim.proc.poll() is None

    # -- teardown --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop whatever was started, the subscriber and the daemon first."""
        sub, daemon, replay, patient, sim = (
            getattr(self, name, None) for name in ("sub", "daemon", "replay", "patient", "sim")
        )
        if sub is not None:
            sub.close()
        if daemon is not None:
            daemon.stop()
        if replay is not None:
            replay.close()
        if patient is not None:
            patient.stop()
        if sim is not None:
            sim.stop()
