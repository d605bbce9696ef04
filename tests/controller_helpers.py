"""Helpers for the controller tests: real processes, real sockets, deadlines instead of sleeps.

- :func:`train_model`: a small "dnn" trained (torch, in the test process only) on real Myo data
  and exported with metaemg-export's code: a model that actually decodes intent.
- :class:`Sim`: ``metaemg-sim orthosis`` as a subprocess on a pty behind a symlink, with its
  JSON-lines log read incrementally.
- :class:`Daemon`: ``myhand-controller`` as a subprocess (the four flags and a control socket),
  with its JSON log lines collected by a thread.
- :class:`Sub`: a ZeroMQ SUB socket on the daemon's monitor stream.
"""

from __future__ import annotations

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

import numpy as np
from polling import wait_until

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def unique_name(prefix: str = "test-emg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def myo_recording(myo_src: Path, subject: str, session: str):
    from metalearn.myo import build_recording, find_sessions

    for s in find_sessions(myo_src):
        if s.subject == subject and s.name == session:
            return build_recording(s)
    raise LookupError(f"{subject}/{session} not in {myo_src}")


def train_model(
    out: Path,
    recordings: list,
    *,
    window: int = 50,
    stride: int = 10,
    steps: int = 400,
    seed: int = 0,
    rate: float | None = None,
) -> Path:
    """Train a small dnn on ``recordings`` (supervised, full batch) and export it to ``out``."""
    import torch

    from metaemg.modelfile import CLASS_NAMES
    from metaemg.signal import SignalSpec, condition, make_windows
    from metalearn.checkpoint import save_checkpoint
    from metalearn.export import export_onnx
    from metalearn.maml import torch_threads
    from metalearn.models import build_model
    from metalearn.tasks import Scaler

    spec = SignalSpec.myo(window=window, stride=stride, **({"sample_rate": rate} if rate else {}))
    xs, ys = [], []
    for rec in recordings:
        w, ends = make_windows(condition(rec.emg, spec), spec.window, spec.stride)
        xs.append(w)
        ys.append(rec.labels[ends])
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys)
    scaler = Scaler.fit("standard", x)
    with torch_threads(1):  # a tiny model: more threads only contend with the other processes
        torch.manual_seed(seed)
        model = build_model("dnn", n_channels=spec.channels, window=spec.window, fc_units=32)
        xt = torch.from_numpy(scaler.transform(x).astype(np.float32))
        yt = torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
        model.eval()
    ckpt = {
        "model": {"kind": "dnn", "n_channels": spec.channels, "window": spec.window, "fc_units": 32},
        "state_dict": model.state_dict(),
        "signal": spec.to_dict(),
        "scaler": scaler.to_dict(),
        "inner": {"optimizer": "adam", "steps": 5, "lr": 0.01, "first_order": False},
        "class_names": list(CLASS_NAMES),
        "config": {"model": "dnn"},
        "config_hash": None,
        "data_hash": None,
        "meta_epoch": None,
        "val_loss": float(loss.detach()),
        "verify_windows": x[:16],
    }
    ckpt_path = save_checkpoint(out.with_suffix(".pt"), ckpt)
    return export_onnx(ckpt_path, out)


def calibrated_model(out: Path, recordings: list) -> Path:
    """The packaged default model calibrated on ``recordings`` as metaemg-calibrate adapts it (its
    closed-form head: milliseconds, where training a network took half a minute), exported to ``out``."""
    from metaemg.modelfile import default_model_path
    from metaemg.signal import SignalChain, make_windows
    from metalearn.adapt import Adapter, export_adapted

    adapter = Adapter.from_file(default_model_path())
    spec = adapter.info.signal
    windows, labels, samples = [], [], []
    for rec in recordings:
        y = SignalChain(spec).process(rec.emg)
        w, ends = make_windows(y, spec.window, spec.stride)
        windows.append(w.astype(np.float32))
        labels.append(rec.labels[ends])
        samples.append(y)
    x = np.concatenate(windows)
    adapted = adapter.adapt(x, np.concatenate(labels), np.concatenate(samples))
    out.parent.mkdir(parents=True, exist_ok=True)
    return export_adapted(adapted, {"format": "metaemg-calibration/1", "source": "tests"}, out, x[:32])


def male13_model(base: Path, myo_src: Path) -> Path:
    """The calibrated test model, made once per test session (cached under ``base``): the
    default model calibrated on Male13's sessions training0 and Test1; Test0 stays unseen (about
    96 % of its windows decoded offline)."""
    out = base / "ctl_models" / "male13.onnx"
    if not out.exists():
        calibrated_model(out, [myo_recording(myo_src, "Male13", s) for s in ("training0", "Test1")])
    return out


# -- waiting ---------------------------------------------------------------------------------------


def end_process(proc: subprocess.Popen, before_close: Callable[[], None] | None = None) -> None:
    """SIGTERM (SIGKILL after 5 s) if still running, then close its pipes."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if before_close is not None:
        before_close()  # e.g. join the thread that reads a pipe
    for stream in (proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()


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
        new = [json.loads(line) for line in lines if line.strip()]
        self.records += new
        return new

    def events(self, name: str) -> list[dict]:
        self.poll()
        return [r for r in self.records if r.get("event") == name]

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        def find():
            self.poll()
            return next((r for r in self.records if predicate(r)), None)

        return wait_until(find, timeout, what)


# -- processes -------------------------------------------------------------------------------------


class Sim:
    """The orthosis simulator on a pty, ``link`` a udev-like symlink to it."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.link = tmp / "myhand"
        self.log_path = tmp / "sim.jsonl"
        self.control = tmp / "sim.ctl"
        self.proc = subprocess.Popen(
            [
                str(BIN / "metaemg-sim"),
                "orthosis",
                "--link",
                str(self.link),
                "--log",
                str(self.log_path),
                "--control",
                str(self.control),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pty = self.proc.stdout.readline().strip()
        assert self.pty.startswith("/dev/"), self.proc.stderr.read()
        self.log = JsonLines(self.log_path)

    def send(self, **request) -> None:
        from firmware_protocol.simulator import send_control

        send_control(self.control, request)

    def stop(self) -> None:
        end_process(self.proc)


class Daemon:
    """``myhand-controller`` with the four flags, a private control socket and a private monitor."""

    def __init__(
        self, tmp: Path, *, stream: str, port: str, model: Path, extra: tuple[str, ...] = (), env: dict | None = None
    ) -> None:
        self.monitor = f"ipc://{tmp}/monitor.sock"
        self.control = f"ipc://{tmp}/run/control.sock"
        self.argv = [
            str(BIN / "myhand-controller"),
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
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def events(self, name: str) -> list[dict]:
        return [r for r in list(self.lines) if r.get("event") == name]

    def wait_log(self, predicate: Callable[[dict], bool], timeout: float, what: str) -> dict:
        def find():
            if self.proc.poll() is not None and not any(predicate(r) for r in list(self.lines)):
                self._reader.join(1)
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {what}: "
                    f"{self.proc.stderr.read()}\n{''.join(self.raw[-20:])}"
                )
            return next((r for r in list(self.lines) if predicate(r)), None)

        return wait_until(find, timeout, what)

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
                    f"the daemon exited ({self.proc.returncode}): {self.proc.stderr.read()}\n" + "".join(self.raw[-10:])
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
        self.stderr = self.proc.stderr.read()
        return rc, elapsed

    def stop(self) -> None:
        end_process(self.proc, before_close=lambda: self._reader.join(2))


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
