"""Latency of the real chain on this machine: LSL outlet -> daemon (own process) -> orthosis
simulator on a pseudo-terminal.

    python -m bench.latency                    # 20 s run, human tables, PNG histogram
    python -m bench.latency --duration 60 --json --out latency.png
    python -m bench.latency --load 2 --while-calibrating --no-compare --json   # under load

What it measures, all on ``time.monotonic()`` (= LSL ``local_clock()`` on Linux):

1. **End to end**, per window: from pushing the window's last sample into the LSL outlet (this
   process stamps each sample with the clock at push time) to the simulator reading the bytes of
   the COMMAND frame of that window (its log's ``rx_t``; the floor is stamped at its read too),
   matched by ``command_seq``; and the daemon's own per-stage times (``stages_us`` of the
   monitor's ``decision``: input, signal, model, policy, link). The daemon runs as
   ``myhand-controller`` with its defaults (a COMMAND for every window).
2. **Floor**: the same path with no processing: LSL push -> a separate Python process pulls (the
   daemon's strategy: ``pull_sample(timeout)`` then ``pull_chunk(0)`` drain) and writes the
   sample's stamp to a pty -> this process reads it. ``ratio_p50`` = end-to-end p50 / floor p50.
   The **naive pull loop** (``pull_chunk(0)`` polled every 5 ms) is measured the same way.
3. **Decision latency** on a replayed real recording (Myo Male13/Test0, needs the dataset and
   torch to train the small test model on the subject's other sessions): from each label change
   (the push of its first sample) to the first COMMAND with the new intent at the simulator.
4. **Inference**: onnxruntime (the daemon's choice) against torch for the same architecture, one
   window per call, one thread.

**Load** (issue 18), applied from just before the daemon starts until the floor (and, without
``--no-compare``, the naive floor and the inference comparison) is measured, then stopped:
``--load N`` runs N CPU-bound processes (``python -c "while True: pass"``); ``--while-calibrating``
runs ``metaemg-calibrate --from-recording CLIP --base-model M --out TMP --no-reload --no-png
--state-dir TMPDIR`` back to back (CLIP: Myo Male13/training0 written as a CSV, synthetic EMG
without the dataset; M: the packaged default model). Both may be combined.

Per run, over the measured interval (``--duration`` s after one second of warm-up):

- **skipped**: windows the daemon dropped because a chunk completed more than one (the sum of the
  ``skipped`` field of its ``decision`` messages; ``skipped_windows_total`` is its status counter,
  start-up included);
- **late**: windows whose COMMAND reached the simulator more than one decision period after the
  window's last sample was pushed, i.e. end-to-end latency > stride / rate (50 ms for a 10-sample
  stride at 200 Hz: the next window is complete by then), plus windows whose COMMAND was written
  but never read by the simulator; the floor's ``floor_late`` applies the same bound to its
  samples;
- **watchdog trips**: the simulator's ``state`` events to SAFE with reason ``ttl`` (no COMMAND
  within its TTL) or ``watchdog`` (no valid host frame within ``watchdog_ms``);
- **daemon CPU**: utime + stime of the daemon's process (``/proc/PID/stat``, all threads) over
  the measured interval, in percent of one core; **RSS**: ``VmRSS`` at the end of the run.

Targets (issue 18; benchmark goals, not assertions): idle, end-to-end p50 <= 0.5 ms and <= 2x the
floor's p50; under ``--load 2`` or ``--while-calibrating``, p99 <= 2 ms, max <= 10 ms, no window
skipped, none late, no watchdog trip; daemon CPU <= 3 % of one core, RSS <= 100 MB. Label change
-> command median <= 150 ms with a 250 ms window.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.config import RealtimeConfig
from metaemg.intents import INTENTS
from rig.models import myo_recording, train_model
from rig.processes import Daemon, Sim, Sub, command, realtime, unique_name

REPO = Path(__file__).resolve().parents[1]
# --peers-rt: the armband's and the orthosis's stand-ins under SCHED_FIFO at this priority, below
# the daemon's (controller.config.RealtimeConfig: 20)
PEER_PRIORITY = 10
STAGES = ("input", "signal", "model", "policy", "link")


def stats(values_ms) -> dict:
    v = np.asarray(values_ms, dtype=float)
    if v.size == 0:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "p999": None, "max": None}
    return {
        "n": int(v.size),
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "p999": float(np.percentile(v, 99.9)),
        "max": float(v.max()),
    }


def late_count(latencies_ms, period_ms: float) -> int:
    """How many latencies exceed one decision period (``period_ms`` = stride / rate): strictly
    greater, so a command exactly one period after its window is still on time."""
    return int(np.count_nonzero(np.asarray(latencies_ms, dtype=float) > period_ms))


def watchdog_trips(records: list[dict], t0: float, t1: float) -> dict[str, int]:
    """The simulator's expiries in [t0, t1]: its ``state`` events to SAFE with reason ``ttl`` or
    ``watchdog`` (:meth:`firmware_protocol.device.Device.tick`), by reason."""
    out = {"ttl": 0, "watchdog": 0}
    for r in records:
        if r.get("event") == "state" and r.get("state") == "safe" and r.get("reason") in out and t0 <= r["t"] <= t1:
            out[r["reason"]] += 1
    return out


def cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks, all threads) from the text of ``/proc/PID/stat``. The command
    name (field 2, in parentheses) may hold spaces and parentheses: fields are counted after the
    last ``)``, where field 3 (state) comes first, so utime (14) and stime (15) are the 12th and 13th."""
    rest = stat.rpartition(")")[2].split()
    return int(rest[11]) + int(rest[12])


def cpu_percent(ticks0: int, ticks1: int, seconds: float, clk_tck: int) -> float:
    """CPU used between two :func:`cpu_ticks` readings ``seconds`` apart, in percent of one core."""
    return 100.0 * (ticks1 - ticks0) / clk_tck / seconds


def read_cpu(pid: int) -> tuple[float, int, dict[int, int]] | None:
    """(monotonic time, :func:`cpu_ticks` of process ``pid``, those of each of its threads by
    thread id) now, or None if it is gone."""
    try:
        t, total = time.monotonic(), cpu_ticks(Path(f"/proc/{pid}/stat").read_text())
        threads = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                threads[int(tid)] = cpu_ticks(Path(f"/proc/{pid}/task/{tid}/stat").read_text())
        return t, total, threads
    except (OSError, ValueError, IndexError):
        return None


def cpu_by_thread(cpu0, cpu1, named: dict[str, int | None]) -> dict[str, float]:
    """CPU between two :func:`read_cpu` readings, in percent of one core, for the threads ``named``
    (name -> thread id) and ``other`` for the rest."""
    seconds, tck = cpu1[0] - cpu0[0], os.sysconf("SC_CLK_TCK")
    used = {tid: ticks - cpu0[2].get(tid, 0) for tid, ticks in cpu1[2].items()}
    out = {name: cpu_percent(0, used.pop(tid, 0), seconds, tck) for name, tid in named.items() if tid is not None}
    out["other"] = cpu_percent(0, sum(used.values()), seconds, tck)
    return out


# -- the armband -------------------------------------------------------------------------------------


class Pusher:
    """The armband's stand-in, in its own process (``python -m bench.latency push``), as the
    armband's bridge is on a device PC: an LSL outlet, one sample per push at ``rate`` Hz, each
    stamped with the clock read just before its push (so the stamp is the push time, not the
    schedule). ``priority`` > 0: it runs under SCHED_FIFO at that priority where this machine
    grants it (:attr:`realtime` says whether it did). :attr:`label_changes` (push time, label) is
    read when it closes."""

    def __init__(self, name: str, emg: np.ndarray, labels: np.ndarray | None, rate: float, priority: int = 0) -> None:
        self.name, self.rate, self.priority = name, rate, priority
        fd, self._data = tempfile.mkstemp(prefix="bench-push-", suffix=".npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh, emg=np.ascontiguousarray(emg, dtype=np.float32), labels=np.asarray([] if labels is None else labels)
            )
        self.label_changes: list[tuple[float, int]] = []  # (push time, label)
        self.realtime = False
        self.proc: subprocess.Popen | None = None

    def start(self) -> Pusher:
        argv = [sys.executable, "-m", "bench.latency", "push", self.name, repr(self.rate), self._data]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None  # stdout=PIPE
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the LSL pusher did not start")
        if self.priority > 0:
            self.realtime = realtime(self.proc.pid, self.priority)
        return self

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=5)
            for line in out.splitlines():
                t, label = line.split()
                self.label_changes.append((float(t), int(label)))
        os.unlink(self._data)


def push(name: str, rate: str, data: str) -> int:
    """The pusher's process (:class:`Pusher`): pushes until SIGTERM, printing each label change."""
    import signal

    import pylsl

    from metaemg.lsl import quiet_liblsl

    quiet_liblsl(pylsl)
    with np.load(data) as d:
        emg, labels = d["emg"], (d["labels"] if d["labels"].size else None)
    period, n = 1.0 / float(rate), len(emg)
    info = pylsl.StreamInfo(name, "EMG", emg.shape[1], float(rate), pylsl.cf_float32, f"bench-{name}")
    outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=2)
    clock = pylsl.local_clock
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    t0, i, last = clock(), 0, None
    while not stop.is_set():
        wait = t0 + i * period - clock()
        if wait > 0:
            time.sleep(wait)
        stamp = clock()
        outlet.push_sample(emg[i % n], stamp)
        if labels is not None and (label := int(labels[i % n])) != last:
            last = label
            print(f"{stamp!r} {label}", flush=True)
        i += 1
    return 0


# -- the floor: push -> pull -> pty write -> read ----------------------------------------------------


def relay(name: str, pty_path: str, mode: str) -> int:
    """The floor's middle process: pull from LSL, write the newest stamp (8 bytes) to the pty."""
    import pylsl

    from controller.source import PULL_WAIT_S
    from metaemg.lsl import quiet_liblsl

    quiet_liblsl(pylsl)
    info = pylsl.resolve_byprop("name", name, 1, 10.0)[0]
    inlet = pylsl.StreamInlet(info, max_buflen=1, recover=False)
    inlet.open_stream(timeout=5.0)
    fd = os.open(pty_path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    print("ready", flush=True)
    try:
        while True:
            if mode == "daemon":  # the daemon's strategy (controller/source.py)
                sample, stamp = inlet.pull_sample(timeout=PULL_WAIT_S)
                if sample is None:
                    continue
                _, more = inlet.pull_chunk(timeout=0.0)
                last = more[-1] if more else stamp
            else:  # naive: poll and sleep
                _, stamps = inlet.pull_chunk(timeout=0.0)
                if not stamps:
                    time.sleep(0.005)
                    continue
                last = stamps[-1]
            os.write(fd, struct.pack("<d", last))
    except (pylsl.util.LostError, OSError, KeyboardInterrupt):
        return 0


def measure_floor(mode: str, seconds: float, emg: np.ndarray, rate: float, peers_rt: bool = False) -> list[float]:
    """Push ``seconds`` of samples; returns push -> pty arrival per write, in ms. The relay runs
    under the daemon's real-time priority where granted (the daemon asks for it by default);
    ``peers_rt``: the pusher and this reading thread under :data:`PEER_PRIORITY`, as the
    simulator in the chain."""
    name = unique_name(f"bench-floor-{mode}")
    master, slave = os.openpty()
    tty.setraw(slave)
    pusher = Pusher(name, emg, None, rate, PEER_PRIORITY if peers_rt else 0).start()  # the relay resolves it
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.latency", "relay", name, os.ttyname(slave), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None  # stdout=PIPE
    lat: list[float] = []
    policy = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        assert proc.stdout.readline().strip() == "ready", "the relay did not start"
        realtime(proc.pid, RealtimeConfig().priority)
        if peers_rt:  # this thread only (it reads the pty): a thread id is what Linux schedules
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PEER_PRIORITY))
        buf = b""
        t_end = time.monotonic() + seconds
        os.set_blocking(master, False)
        while time.monotonic() < t_end:
            r, _, _ = select.select([master], [], [], 0.1)
            if not r:
                continue
            data = os.read(master, 4096)
            now = time.monotonic()
            buf += data
            while len(buf) >= 8:
                (stamp,) = struct.unpack("<d", buf[:8])
                buf = buf[8:]
                lat.append((now - stamp) * 1000)
    finally:
        os.sched_setscheduler(0, *policy)
        proc.terminate()  # the relay first: an inlet whose outlet vanishes logs an error
        proc.wait(5)
        pusher.close()
        os.close(master)
        os.close(slave)
    return lat[int(rate * 0.5) :]  # skip the first half second (connection set-up)


# -- load: busy processes and calibrations on the same machine -----------------------------------------


def calibration_clip(path: Path) -> tuple[Path, str]:
    """A real calibration clip written to ``path``: Myo Male13/training0 if the dataset is there,
    else a synthetic recording. Returns (path, what it is)."""
    from metalearn.myo import default_myo_root
    from metalearn.recording import write_recording
    from rig.replay import load_source

    root = default_myo_root()
    if (root / "EvaluationDataset").is_dir():
        rec, what = myo_recording(root, "Male13", "training0"), "myo:Male13/training0"
    else:
        rec, what = load_source("synth"), "synth"
    return write_recording(path, rec), what


class Load:
    """CPU load for the measured run: ``busy`` processes spinning ``while True: pass``, and with
    ``calibrating`` a thread that runs ``metaemg-calibrate`` on a real clip back to back (a fresh
    state directory each time, the adapted model written to a file, the daemon not told)."""

    def __init__(self, work: Path, busy: int = 0, calibrating: bool = False) -> None:
        self.work = work
        self.busy = busy
        self.calibrating = calibrating
        self.clip: str | None = None
        self._procs: list[subprocess.Popen] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self.calibrations = 0  # finished with status 0
        self.failed = 0
        self.durations: list[float] = []
        self._argv: list[str] = []

    def describe(self) -> str:
        parts = []
        if self.busy:
            parts.append(f"{self.busy} busy-loop process{'es' if self.busy > 1 else ''} (python -c 'while True: pass')")
        if self.calibrating:
            parts.append(f"metaemg-calibrate back to back on {self.clip or 'a real clip'}")
        return " + ".join(parts) if parts else "none"

    def start(self) -> Load:
        if self.calibrating:
            from metaemg.modelfile import default_model_path

            clip, self.clip = calibration_clip(self.work / "load-clip.csv")
            self._argv = [
                *command("metaemg-calibrate", "calibration.cli"),
                "--from-recording",
                str(clip),
                "--base-model",
                str(default_model_path()),
                "--out",
                str(self.work / "load-adapted.onnx"),
                "--no-reload",
                "--no-png",
                "--state-dir",
                str(self.work / "load-state"),
            ]
        for _ in range(self.busy):
            self._procs.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        if self.calibrating:
            self._thread = threading.Thread(target=self._calibrate, name="calibrating", daemon=True)
            self._thread.start()
        return self

    def _calibrate(self) -> None:
        log = self.work / "load-calibrate.log"
        while not self._stop.is_set():
            shutil.rmtree(self.work / "load-state", ignore_errors=True)
            t0 = time.monotonic()
            with self._lock:
                if self._stop.is_set():
                    return
                with open(log, "w", encoding="utf-8") as fh:
                    self._current = subprocess.Popen(self._argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
            rc = self._current.wait()
            if self._stop.is_set():
                return  # stopped by stop(): neither a success nor a failure
            if rc == 0:
                self.calibrations += 1
                self.durations.append(time.monotonic() - t0)
            else:
                self.failed += 1
                time.sleep(0.5)  # a calibration that fails at once would otherwise spin

    def stop(self) -> dict:
        self._stop.set()
        with self._lock:
            current = self._current
        if current is not None and current.poll() is None:
            current.terminate()
        if self._thread is not None:
            self._thread.join(10)
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return self.summary()

    def summary(self) -> dict:
        return {
            "busy_processes": self.busy,
            "calibrating": self.calibrating,
            "calibration_clip": self.clip,
            "calibrations": self.calibrations if self.calibrating else None,
            "calibrations_failed": self.failed if self.calibrating else None,
            "calibration_median_s": float(np.median(self.durations)) if self.durations else None,
        }


# -- inference: onnxruntime vs torch -------------------------------------------------------------------


def measure_inference(model_path: Path, n: int = 2000) -> dict:
    from metaemg.modelfile import OnnxModel

    model = OnnxModel(model_path)
    info = model.info
    x = np.random.default_rng(0).normal(0, 1, (1, info.window, info.channels)).astype(np.float32)

    def timeit(fn) -> list[float]:
        for _ in range(200):
            fn()
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    result = {"onnxruntime": stats(timeit(lambda: model.predict(x)))}
    try:
        import torch

        from metalearn.maml import torch_threads
        from metalearn.models import build_model
    except ImportError as exc:
        result["torch"] = {"skipped": f"torch not installed ({exc})"}
        return result
    hp = {k: v for k, v in info.to_dict()["model"].items() if k not in ("kind", "n_classes")}
    with torch_threads(1):
        net = build_model(info.kind, **hp).eval()
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            result["torch"] = stats(timeit(lambda: torch.softmax(net(xt), -1).numpy()))
    return result


# -- the chain ------------------------------------------------------------------------------------------


def load_data():
    """(emg, labels, rate, source, training recordings or None): Male13/Test0 if the Myo dataset is
    there, else a synthetic recording (then no decision latency)."""
    from metalearn.myo import default_myo_root
    from rig.replay import load_source

    if (default_myo_root() / "EvaluationDataset").is_dir():
        rec = load_source("myo:Male13/Test0")
        train = [myo_recording(default_myo_root(), "Male13", s) for s in ("training0", "Test1")]
        return rec.emg, rec.labels, rec.sample_rate, "myo:Male13/Test0", train
    rec = load_source("synth")
    return rec.emg, rec.labels, rec.sample_rate, "synth", None


def run_chain(
    work: Path,
    model: Path,
    emg: np.ndarray,
    labels,
    rate: float,
    duration: float,
    daemon_args: tuple[str, ...] = (),
    peers_rt: bool = False,
    paused_s: float = 0.0,
) -> dict:
    sim = Sim(work)
    sim_rt = realtime(sim.proc.pid, PEER_PRIORITY) if peers_rt else False
    name = unique_name("bench-emg")
    pusher = Pusher(name, emg, labels, rate, PEER_PRIORITY if peers_rt else 0).start()
    daemon = Daemon(work, stream=name, port=str(sim.link), model=model, extra=daemon_args)
    sub = Sub(daemon.monitor, topics=("decision", "event"))
    cpu0 = cpu1 = None
    try:
        running = sub.wait_for(lambda topic, m: topic == "event" and m.get("state") == "running", 30, "running")
        t_start = running["t_mono"] + 1.0  # one second of warm-up
        t_end = t_start + duration
        while (now := time.monotonic()) < t_end + 0.3:
            if cpu0 is None and now >= t_start:
                cpu0 = read_cpu(daemon.proc.pid)
            if cpu1 is None and now >= t_end:
                cpu1 = read_cpu(daemon.proc.pid)
            until = t_start if cpu0 is None else t_end if cpu1 is None else t_end + 0.3
            sub.drain(min(100, max(1, int((until - now) * 1000))))  # the CPU readings on time
        if cpu1 is None:
            cpu1 = read_cpu(daemon.proc.pid)
        rss = rss_kb(daemon.proc.pid)
        status = daemon.status()
        paused = _paused_cpu(daemon, paused_s) if paused_s > 0 else None
    finally:
        sub.close()
        daemon.stop()
        pusher.close()
        sim.stop()
    decisions = [m for topic, m in sub.messages if topic == "decision" and t_start <= m["t_mono"] <= t_end]
    e2e, lost = _end_to_end(decisions, sim.log.events("command"))
    commands = [{**c, "t": c["rx_t"]} for c in sim.log.events("command") if t_start <= c["rx_t"] <= t_end]
    cpu_pct, threads = None, None
    if cpu0 is not None and cpu1 is not None and cpu1[0] > cpu0[0]:
        cpu_pct = cpu_percent(cpu0[1], cpu1[1], cpu1[0] - cpu0[0], os.sysconf("SC_CLK_TCK"))
        tids = ((status or {}).get("realtime") or {}).get("threads") or {}
        threads = cpu_by_thread(cpu0, cpu1, {"hot path": tids.get("hot_path"), "loop": tids.get("loop")})
    safe_reasons: dict[str, int] = {}
    for r in sim.log.events("state"):
        if r.get("state") == "safe" and t_start <= r["t"] <= t_end:
            safe_reasons[str(r.get("reason"))] = safe_reasons.get(str(r.get("reason")), 0) + 1
    return {
        "decisions": len(decisions),
        "with_command": sum(d["command_seq"] is not None for d in decisions),
        "matched": len(e2e),
        "lost": lost,
        "e2e_ms": e2e,
        "trips": watchdog_trips(sim.log.records, t_start, t_end),
        "safe_reasons": safe_reasons,
        "daemon_cpu_pct": cpu_pct,
        "daemon_cpu_threads": threads,
        "daemon_cpu_paused_pct": paused,
        "cpu_interval_s": None if cpu0 is None or cpu1 is None else cpu1[0] - cpu0[0],
        "daemon_ms": [d["latency_ms"] for d in decisions],
        "stages_us": {s: [d["stages_us"][s] for d in decisions] for s in STAGES},
        "skipped": sum(d["skipped"] for d in decisions),
        "commands": commands,
        "label_changes": [c for c in pusher.label_changes if t_start <= c[0] <= t_end],
        "daemon_rss_mb": None if rss is None else rss / 1024,
        "counters": status["counters"] if status else {},
        "scheduling": status.get("realtime") if status else None,
        "peers_realtime": {"pusher": pusher.realtime, "simulator": sim_rt},
    }


def _paused_cpu(daemon, seconds: float) -> float | None:
    """The daemon's CPU (% of one core) over ``seconds`` with the hand held: the same stream,
    every window decided, no COMMAND sent."""
    daemon.request(cmd="pause")
    time.sleep(1.0)  # not synchronisation: the STOP and its ACK out of the interval measured
    p0 = read_cpu(daemon.proc.pid)
    time.sleep(seconds)
    p1 = read_cpu(daemon.proc.pid)
    if p0 is not None and p1 is not None and p1[0] > p0[0]:
        return cpu_percent(p0[1], p1[1], p1[0] - p0[0], os.sysconf("SC_CLK_TCK"))
    return None


def _end_to_end(decisions: list[dict], commands: list[dict]) -> tuple[list[float], int]:
    """Each decision's push -> device time (ms; the simulator's read of its COMMAND), and how
    many COMMANDs the daemon wrote that the simulator never read."""
    by_seq = {c["seq"]: c for c in commands}
    e2e, lost = [], 0
    for d in decisions:
        c = by_seq.get(d["command_seq"])
        if c is not None and d["lsl_ts"] is not None:
            e2e.append((c["rx_t"] - d["lsl_ts"]) * 1000)
        elif c is None and d["command_seq"] is not None:
            lost += 1  # written by the daemon, never read by the simulator
    return e2e, lost


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def decision_latency(label_changes: list[tuple[float, int]], commands: list[dict]) -> dict:
    """From each label change to the first command with that intent before the next change."""
    times = [c["t"] for c in commands]
    out, missed = [], 0
    for k, (t, label) in enumerate(label_changes):
        t_next = label_changes[k + 1][0] if k + 1 < len(label_changes) else float("inf")
        i = int(np.searchsorted(times, t))
        hit = next((c for c in commands[i:] if c["t"] < t_next and c["intent"] == INTENTS[label]), None)
        if hit is None:
            missed += 1
        else:
            out.append((hit["t"] - t) * 1000)
    return {
        "changes": len(label_changes),
        "missed": missed,
        "median_ms": float(np.median(out)) if out else None,
        "values_ms": out,
    }


# -- report ---------------------------------------------------------------------------------------------


def _daemon_line(chain: dict) -> str:
    """The daemon's CPU (by thread, and paused when measured) and memory, in one line."""
    cpu, rss = chain["daemon_cpu_pct"], chain["daemon_rss_mb"]
    return (
        f"  daemon: CPU {'-' if cpu is None else f'{cpu:.2f} %'} of one core over "
        f"{chain['cpu_interval_s'] or 0:.1f} s, RSS {'-' if rss is None else f'{rss:.1f} MB'}"
        + (
            ""
            if not chain["daemon_cpu_threads"]
            else "; by thread: " + ", ".join(f"{k} {v:.2f} %" for k, v in chain["daemon_cpu_threads"].items())
        )
        + (
            ""
            if chain["daemon_cpu_paused_pct"] is None
            else f"; paused (every window decided, no COMMAND) {chain['daemon_cpu_paused_pct']:.2f} %"
        )
    )


def _row(name: str, s: dict, unit: str = "ms") -> str:
    if not s.get("n"):
        return f"  {name:<34} {'-':>9}"
    return f"  {name:<34} {s['p50']:>9.3f} {s['p95']:>9.3f} {s['p99']:>9.3f} {s['max']:>9.3f}  {unit}  (n={s['n']})"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def targets(
    loaded: bool,
    e2e: dict,
    floor: dict,
    ratio: float | None,
    skipped: int,
    late: int,
    trips: int,
    cpu_pct: float | None,
    rss_mb: float | None,
) -> list[tuple[str, str, bool]]:
    """Issue 18's targets that apply to this run: (target, measured, met). Idle: p50 and its
    ratio to the floor; under load: p99, max, skipped, late, watchdog trips; always CPU and RSS."""

    def le(v: float | None, bound: float) -> bool:
        return v is not None and v <= bound

    out: list[tuple[str, str, bool]] = []
    if not loaded:
        out.append(("e2e p50 <= 0.5 ms", _ms(e2e["p50"]), le(e2e["p50"], 0.5)))
        out.append(("e2e p50 <= 2x floor p50", "-" if ratio is None else f"{ratio:.2f}x", le(ratio, 2.0)))
    else:
        out.append(("e2e p99 <= 2 ms", _ms(e2e["p99"]), le(e2e["p99"], 2.0)))
        out.append(("e2e max <= 10 ms", _ms(e2e["max"]), le(e2e["max"], 10.0)))
        out.append(("0 skipped", str(skipped), skipped == 0))
        out.append(("0 late", str(late), late == 0))
        out.append(("0 watchdog trips", str(trips), trips == 0))
    out.append(("daemon CPU <= 3 % of one core", "-" if cpu_pct is None else f"{cpu_pct:.2f} %", le(cpu_pct, 3.0)))
    out.append(("daemon RSS <= 100 MB", "-" if rss_mb is None else f"{rss_mb:.1f} MB", le(rss_mb, 100.0)))
    return out


def histogram(path: Path, e2e: list[float], floor: list[float], note: str = "") -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(np.percentile(e2e, 99.5) if e2e else 1, np.percentile(floor, 99.5) if floor else 1) * 1.2
    bins = np.linspace(0, top, 80)
    ax.hist(
        np.clip(floor, 0, top),
        bins=bins,  # type: ignore[arg-type]  # matplotlib's stubs want a Sequence; it takes any array-like
        alpha=0.6,
        density=True,
        label=f"floor (LSL -> pty), p50 {np.median(floor):.2f} ms",
    )
    ax.hist(
        np.clip(e2e, 0, top),
        bins=bins,  # type: ignore[arg-type]  # matplotlib's stubs want a Sequence; it takes any array-like
        alpha=0.6,
        density=True,
        label=f"end to end, p50 {np.median(e2e):.2f} ms",
    )
    ax.set_xlabel("ms (last sample pushed -> frame read at the pty)")
    ax.set_ylabel("density (floor: every sample; end to end: every window)")
    ax.legend()
    ax.set_title(f"MetaEMG latency on {platform.node()} ({os.cpu_count()} CPUs)" + (f"\n{note}" if note else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n\n")[0])
    helpers = p.add_subparsers(dest="helper", metavar="{push,relay}", help="the run's own helper processes")
    pusher = helpers.add_parser("push", help="the armband's stand-in: push a recording into an LSL outlet")
    pusher.add_argument("name")
    pusher.add_argument("rate")
    pusher.add_argument("data")
    relayer = helpers.add_parser("relay", help="the floor's reader: LSL pull -> pty write, one strategy")
    relayer.add_argument("name")
    relayer.add_argument("pty")
    relayer.add_argument("mode", choices=("daemon", "naive"))
    p.add_argument("--duration", type=float, default=20.0, help="seconds measured in the chain run (default 20)")
    p.add_argument("--floor-s", type=float, default=8.0, help="seconds per floor measurement (default 8)")
    p.add_argument("--model", type=Path, help="the daemon's model (default: trained on Male13, else the packaged one)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path(tempfile.gettempdir()) / "metaemg-latency.png",
        help="the histogram (default: metaemg-latency.png in the temporary directory)",
    )
    p.add_argument("--no-compare", action="store_true", help="skip the naive-loop floor and the torch comparison")
    p.add_argument("--config", type=Path, help="a myhand-controller config file for the daemon (default: its defaults)")
    p.add_argument("--json", action="store_true", help="end with one JSON document")
    p.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="run N CPU-bound processes (busy loops) during the measured run, chain and floor (default 0)",
    )
    p.add_argument(
        "--while-calibrating",
        action="store_true",
        help="run metaemg-calibrate on a real clip back to back during the measured run",
    )
    p.add_argument(
        "--paused-s",
        type=float,
        default=0.0,
        metavar="S",
        help="after the run, pause the daemon and measure its CPU for S seconds (the stream decided, no COMMAND sent)",
    )
    p.add_argument(
        "--peers-rt",
        action="store_true",
        help=f"run the armband's and the orthosis's stand-ins (pusher, simulator) under SCHED_FIFO "
        f"{PEER_PRIORITY}, below the daemon, where this machine grants it",
    )
    return p


@dataclass
class Measured:
    """One run's measurements, and every figure the report and the JSON document give."""

    args: argparse.Namespace
    source: str
    model_note: str
    period_ms: float
    load: str
    applied: dict
    chain: dict
    floor: list[float]
    naive: list[float]
    inference: dict
    decision: dict | None

    def __post_init__(self) -> None:
        chain = self.chain
        self.e2e, self.fl = stats(chain["e2e_ms"]), stats(self.floor)
        self.late = late_count(chain["e2e_ms"], self.period_ms) + chain["lost"]
        self.floor_late = late_count(self.floor, self.period_ms)
        self.trips = sum(chain["trips"].values())
        self.ratio = self.e2e["p50"] / self.fl["p50"] if self.e2e["n"] and self.fl["n"] else None
        self.loaded = bool(self.args.load or self.args.while_calibrating)
        self.png: Path | None = None

    def targets(self) -> list[tuple[str, str, bool]]:
        chain = self.chain
        return targets(
            self.loaded,
            self.e2e,
            self.fl,
            self.ratio,
            chain["skipped"],
            self.late,
            self.trips,
            chain["daemon_cpu_pct"],
            chain["daemon_rss_mb"],
        )

    def to_json(self) -> dict:
        chain, e2e, fl, decision, args = self.chain, self.e2e, self.fl, self.decision, self.args
        return {
            "machine": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "source": self.source,
            "model": self.model_note,
            "duration_s": args.duration,
            "windows": chain["decisions"],
            "matched": chain["matched"],
            "skipped": chain["skipped"],
            "e2e_p50_ms": e2e["p50"],
            "e2e_p95_ms": e2e["p95"],
            "e2e_p99_ms": e2e["p99"],
            "e2e_max_ms": e2e["max"],
            "floor_p50_ms": fl["p50"],
            "floor_p99_ms": fl["p99"],
            "floor_max_ms": fl["max"],
            "ratio_p50": self.ratio,
            "daemon_ms": stats(chain["daemon_ms"]),
            "stages_us": {s: stats(chain["stages_us"][s]) for s in STAGES},
            "naive_floor_ms": stats(self.naive) if self.naive else None,
            "inference_ms": self.inference,
            "decision_median_ms": None if decision is None else decision["median_ms"],
            "decision_changes": None if decision is None else decision["changes"],
            "decision_missed": None if decision is None else decision["missed"],
            "daemon_rss_mb": chain["daemon_rss_mb"],
            "histogram": None if self.png is None else str(self.png),
            "e2e_p999_ms": e2e["p999"],
            "floor_p999_ms": fl["p999"],
            "period_ms": self.period_ms,
            "late": self.late,
            "lost": chain["lost"],
            "floor_late": self.floor_late,
            "floor_n": fl["n"],
            "skipped_windows_total": chain["counters"].get("skipped_windows"),
            "watchdog_trips": self.trips,
            "ttl_expiries": chain["trips"]["ttl"],
            "watchdog_expiries": chain["trips"]["watchdog"],
            "device_safe": chain["safe_reasons"],
            "daemon_cpu_pct": chain["daemon_cpu_pct"],
            "daemon_cpu_threads": chain["daemon_cpu_threads"],
            "daemon_cpu_paused_pct": chain["daemon_cpu_paused_pct"],
            "cpu_interval_s": chain["cpu_interval_s"],
            "load": args.load,
            "while_calibrating": args.while_calibrating,
            "peers_rt": args.peers_rt,
            "peers_realtime": chain["peers_realtime"],
            "daemon_scheduling": chain["scheduling"],
            "load_applied": self.applied,
            "targets": {what: ok for what, _, ok in self.targets()},
        }


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.helper == "push":
        return push(args.name, args.rate, args.data)
    if args.helper == "relay":
        return relay(args.name, args.pty, args.mode)
    if args.load < 0:
        p.error("--load must be >= 0")
    m = measure(args)
    report(m)
    if args.json:
        print(json.dumps(m.to_json()))
    return 0


def measure(args: argparse.Namespace) -> Measured:
    """The chain run, the floors and the inference, under the load asked for."""
    from metaemg.modelfile import OnnxModel, default_model_path

    emg, labels, rate, source, train = load_data()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        work = Path(tmp)
        model, model_note = args.model, "given"
        if model is None and train is not None:
            try:
                print("training the test model on Male13 training0 + Test1 (torch, ~10 s) ...", flush=True)
                model = train_model(work / "male13.onnx", train, steps=300)
                model_note = "small dnn trained on Male13 training0+Test1"
            except ImportError:
                model = None
        if model is None:
            model, model_note = default_model_path(), "packaged default model (decision latency not meaningful)"
        spec = OnnxModel(model).info.signal
        period_ms = 1000.0 * spec.stride / spec.sample_rate  # one decision period
        load = Load(work, args.load, args.while_calibrating)
        try:
            load.start()  # from before the daemon starts until the last measurement
            print(f"load: {load.describe()}", flush=True)
            print(
                f"chain: {source} at {rate:g} Hz -> myhand-controller ({model_note}) -> metaemg-sim on a pty, "
                f"{args.duration:g} s ...",
                flush=True,
            )
            chain = run_chain(
                work,
                model,
                emg,
                labels,
                rate,
                args.duration,
                () if args.config is None else ("--config", str(args.config)),
                args.peers_rt,
                args.paused_s,
            )
            print("floor: LSL push -> pull (daemon strategy) -> pty write -> read ...", flush=True)
            floor = measure_floor("daemon", args.floor_s, emg, rate, args.peers_rt)
            naive = [] if args.no_compare else measure_floor("naive", args.floor_s, emg, rate, args.peers_rt)
            inference = {} if args.no_compare else measure_inference(model)
        finally:
            applied = load.stop()
    decision = decision_latency(chain["label_changes"], chain["commands"]) if train is not None else None
    return Measured(
        args, source, model_note, period_ms, load.describe(), applied, chain, floor, naive, inference, decision
    )


def report(m: Measured) -> None:
    """The run's figures as lines, the targets, and the histogram."""
    print(
        f"\n{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"{m.chain['decisions']} windows, {m.chain['matched']} matched to a command at the simulator, "
        f"{m.chain['skipped']} skipped"
    )
    calibrated = ""
    if m.args.while_calibrating:
        med = m.applied["calibration_median_s"]
        calibrated = (
            f" ({m.applied['calibrations']} calibrations finished, {m.applied['calibrations_failed']} failed"
            f"{'' if med is None else f', {med:.1f} s each'})"
        )
    print(f"  load: {m.load}{calibrated}")
    sched = m.chain["scheduling"] or {}
    peers = m.chain["peers_realtime"]
    print(
        f"  daemon scheduling: {sched.get('policy', '-')} {sched.get('priority', '')}"
        + ("" if sched.get("realtime") else f" ({sched.get('note')})")
        + (
            f"; stand-ins real-time (--peers-rt): pusher {'yes' if peers['pusher'] else 'no'}, "
            f"simulator {'yes' if peers['simulator'] else 'no'}"
            if m.args.peers_rt
            else "; stand-ins (pusher, simulator) at normal priority"
        )
    )
    print(f"  {'':<34} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    print(_row("end to end (push -> device)", m.e2e))
    print(_row("daemon (chunk received -> written)", stats(m.chain["daemon_ms"])))
    for s in STAGES:
        print(_row(f"  stage {s}", stats(m.chain["stages_us"][s]), "us"))
    print(_row("floor (push -> pull -> pty -> read)", m.fl))
    if m.naive:
        print(_row("floor, naive pull loop (5 ms poll)", stats(m.naive)))
    for name, s in m.inference.items():
        if "n" in s:
            print(_row(f"inference {name}", s))
        else:
            print(f"  inference {name}: {s['skipped']}")
    if m.ratio is not None:
        print(f"  ratio end-to-end p50 / floor p50: {m.ratio:.2f}")
    print(f"  p99.9: end to end {_ms(m.e2e['p999'])}, floor {_ms(m.fl['p999'])}")
    lost_note = f" ({m.chain['lost']} never read by the simulator)" if m.chain["lost"] else ""
    print(
        f"  skipped {m.chain['skipped']} (status counter, start-up included: "
        f"{m.chain['counters'].get('skipped_windows', '-')}); late (> {m.period_ms:g} ms, one decision period) "
        f"{m.late}{lost_note}"
        f"; floor late {m.floor_late} of {m.fl['n']}"
    )
    print(
        f"  watchdog trips at the simulator: {m.trips} (ttl {m.chain['trips']['ttl']}, watchdog "
        f"{m.chain['trips']['watchdog']}); device to SAFE: {m.chain['safe_reasons'] or 'never'}"
    )
    print(_daemon_line(m.chain))
    for what, value, ok in m.targets():
        print(f"  target {what}: {value} -> {'met' if ok else 'NOT met'}")
    decision = m.decision
    if decision is not None:
        med = decision["median_ms"]
        print(
            f"  label change -> first correct command: median "
            f"{'-' if med is None else f'{med:.0f} ms'} over {decision['changes'] - decision['missed']} of "
            f"{decision['changes']} changes ({decision['missed']} without a correct command before the next change)"
        )
    m.png = histogram(m.args.out, m.chain["e2e_ms"], m.floor, "" if not m.loaded else f"load: {m.load}")
    print(f"  histogram: {m.png}" if m.png else "  histogram: skipped (matplotlib not installed)")


if __name__ == "__main__":
    sys.exit(main())
