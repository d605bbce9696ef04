"""A simulated patient: an armband (LSL outlet) worn by someone who follows the calibration's
cues (``metaemg-patient``).

The armband is an LSL outlet (default name :data:`metaemg.lsl.DEFAULT_STREAM_NAME`, the
recording's channels and rate, float32) that pushes the samples in real time, a chunk every
~10 ms, each sample stamped with its LSL time (``t0 + i / rate``). The recording is any source of
``metaemg-replay`` (:func:`rig.replay.load_source`): ``path.csv``, ``myo:SUBJECT/SESSION`` or
``synth[:SEED]``.

The patient listens (ZeroMQ SUB, topic ``cue``) to the daemon's monitor stream, where the
calibration's cues are republished (``{"cue": <cue object>, ...}``), and/or to the calibration
tool's own cue socket (the cue object at the top level); the same cue arriving both ways is
followed once. A cue object is ``{"cue": "countdown"|"relax"|"open"|"close"|"move"|"done"|"aborted",
"index": ..., ...}`` (:meth:`calibration.daemonlink.DaemonLink.publish_cue`).

- Each new ``relax``/``open``/``close``/``move`` cue (a new ``index``) is followed after a reaction time
  (``reaction_s`` plus a seeded uniform jitter of ``+-jitter_s``): from the sample stamped at
  that time on, the armband plays real EMG of the cued intent, contiguous samples of a labelled
  run of that intent in the recording (the runs of equal labels). Each followed cue starts at
  the onset of the next run of its intent (the intent's runs in turn, wrapping round); a cue
  that outlasts its run continues into the following run. ``move`` plays the recording's
  movements that are no intent (label ``move``: a Myo session's wrist movements, which
  ``metaemg-patient`` appends), or relax when it has none.
- The ``countdown`` of a calibration makes the patient relax; ``done`` (or ``aborted``) ends it.
- Idle, before the first cue and after the calibration, the armband plays the recording itself
  in order, looping, as ``metaemg-replay --loop`` does: after a calibration the hand moves (the
  "use" phase of a rehearsal). ``idle="relax"`` plays relax runs instead.

Every change of what is played is an event (:attr:`Patient.events`, and one JSON line in the
``log``): ``{"event": "intent", "intent": "open", "cue": "open", "cue_index": 3, "t": ...,
"delay": ..., "at": ..., "row": ...}`` with ``t`` the LSL time the cue arrived, ``delay`` the
reaction time drawn for it, ``at`` the LSL timestamp of the first sample played for it (the first
at or after ``t + delay``) and ``row`` that sample's row in the recording; ``intent`` is
``"recording"`` while idle replays the recording.

:class:`Patient` runs in a thread of the caller's process (tests, the rig); ``main`` is the
console script.
"""

from __future__ import annotations

import argparse
import collections
import json
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from metaemg.cli import entry_point, renamed
from metaemg.errors import ConfigError, DataError
from metaemg.intents import INTENTS, LABELS
from metaemg.lsl import DEFAULT_STREAM_NAME
from rig.processes import keep_time_as_hardware

CUE_TOPIC = b"cue"  # calibration.daemonlink.CUE_TOPIC, and the monitor stream's topic
IDLE_MODES = ("recording", "relax")
CHUNK_S = 0.01  # a chunk of samples every 10 ms
DEFAULT_REACTION_S = 0.3
DEFAULT_JITTER_S = 0.1
RECORDING = "recording"  # what idle plays by default: the recording in order
PATIENT_MOVE_S = 8.0  # of a Myo session's wrist movements, for the calibration's movement segment


def label_runs(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per label (the intents, then ``move``), the runs of equal labels as rows ``(start, end)``
    (end excluded), in order."""
    labels = np.asarray(labels)
    cuts = np.flatnonzero(np.diff(labels)) + 1
    starts = np.r_[0, cuts]
    ends = np.r_[cuts, len(labels)]
    return tuple(np.stack([starts[labels[starts] == k], ends[labels[starts] == k]], axis=1) for k in range(len(LABELS)))


def cue_object(message: object) -> dict | None:
    """The calibration's cue object in a message of either form (monitor stream, or the cue
    socket's own), or None when the message is not a cue."""
    if not isinstance(message, dict):
        return None
    inner = message.get("cue")
    cue = inner if isinstance(inner, dict) else message
    return cue if isinstance(cue.get("cue"), str) else None


class Patient:
    """The armband and the patient wearing it, in a thread (see the module docstring).

    ``endpoints``: where cues are published (the daemon's monitor, the calibration's cue socket;
    either form on any of them). ``stop()`` destroys the outlet (the stream disappears).
    """

    def __init__(
        self,
        rec,
        *,
        name: str = DEFAULT_STREAM_NAME,
        endpoints: Sequence[str] = (),
        reaction_s: float = DEFAULT_REACTION_S,
        jitter_s: float = DEFAULT_JITTER_S,
        seed: int = 0,
        idle: str = RECORDING,
        source_id: str | None = None,
        log: IO[str] | None = None,
    ) -> None:
        if not (reaction_s >= 0 and jitter_s >= 0):
            raise ConfigError(f"reaction time {reaction_s!r} s and jitter {jitter_s!r} s must not be negative")
        if idle not in IDLE_MODES:
            raise ConfigError(f"idle must be one of {', '.join(IDLE_MODES)}, got {idle!r}")
        self.emg = np.ascontiguousarray(rec.emg, dtype=np.float32)  # our own copy: tests may edit it
        self.labels = np.asarray(rec.labels, dtype=np.int64)
        self.rate = float(rec.sample_rate)
        self.runs = label_runs(self.labels)
        missing = [INTENTS[k] for k, runs in enumerate(self.runs[: len(INTENTS)]) if not len(runs)]
        if missing:
            raise DataError(
                f"the recording has no {' or '.join(missing)} samples: the patient could not follow those cues",
                path=getattr(rec, "path", None),
            )
        self.name = name
        self.reaction_s = float(reaction_s)
        self.jitter_s = float(jitter_s)
        self.idle = idle
        self._rng = np.random.default_rng(seed)
        self._log = log
        self.endpoints = list(endpoints)
        self._ctx, self._sub = self._subscribe(self.endpoints)
        try:
            import pylsl

            from metaemg.lsl import quiet_liblsl

            quiet_liblsl(pylsl)
            self._pylsl = pylsl
            info = pylsl.StreamInfo(
                name,
                "EMG",
                self.emg.shape[1],
                self.rate,
                pylsl.cf_float32,
                source_id or f"metaemg-patient-{name}",
            )
            info.desc().append_child_value("manufacturer", "MetaEMG simulated patient")
            self.outlet = pylsl.StreamOutlet(info, chunk_size=2, max_buffered=10)
        except BaseException:
            self._sub.close(linger=0)
            self._ctx.term()
            raise
        self.cues: list[dict] = []  # every cue object received (each once)
        self.events: list[dict] = []  # what was played, from when (see the module docstring)
        self._seen: collections.deque[str] = collections.deque(maxlen=256)  # the same cue by two ways
        self.duplicates: collections.Counter[str] = collections.Counter()  # by cue: heard again the other way
        self._followed: tuple[str, object] | None = None  # (cue, index) last followed
        self._pending: list[tuple[float, str, dict | None, float]] = []  # (at, intent, cue, cue's arrival)
        self._playing = idle  # an intent name or RECORDING
        self._row = 0  # the next row of the recording while idle plays it
        self._cursor = [[0, 0] for _ in LABELS]  # per label: [run, offset in the run]
        self.pushed = 0
        self.t0: float | None = None
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="patient", daemon=True)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> Patient:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def intent(self) -> str:
        """What the armband plays now: ``relax``, ``open``, ``close`` or ``recording`` (idle)."""
        return self._playing

    def wait_for_consumer(self, timeout: float) -> bool:
        return self.outlet.wait_for_consumers(timeout)

    def stop(self) -> None:
        """Stop playing, close the cue subscription and destroy the outlet."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._sub.close(linger=0)
        self._ctx.term()
        del self.outlet

    def __enter__(self) -> Patient:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- cues ------------------------------------------------------------------------------------

    @staticmethod
    def _subscribe(endpoints: Sequence[str]):
        import zmq

        ctx = zmq.Context()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, CUE_TOPIC)
        for endpoint in endpoints:
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                sock.close(linger=0)
                ctx.term()
                raise ConfigError(f"cue endpoint {endpoint!r}: cannot connect: {exc}") from None
        return ctx, sock

    def _listen(self, now: float) -> None:
        """Take the cues that arrived (``now``: their arrival, LSL time) and plan what follows."""
        import zmq

        while True:
            try:
                frames = self._sub.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            try:
                cue = cue_object(json.loads(frames[1]))
            except ValueError:
                continue
            if cue is None:
                continue
            key = json.dumps(cue, sort_keys=True)
            if key in self._seen:  # the same cue by the other way (calibration and daemon)
                self.duplicates[cue["cue"]] += 1
                continue
            self._seen.append(key)
            self.cues.append(cue)
            self._follow(cue, now)

    def _follow(self, cue: dict, now: float) -> None:
        name = cue["cue"]
        if name in INTENTS:
            intent = name
        elif name == "move":
            intent = name if len(self.runs[LABELS.index(name)]) else "relax"  # nothing to move: keep still
        elif name == "countdown":
            intent = "relax"  # a calibration starts: the patient relaxes and waits
        elif name in ("done", "aborted"):
            intent = self.idle
        else:
            return
        key = (name, cue.get("index"))
        if key == self._followed:  # the cue repeated each second while it is on screen
            return
        self._followed = key
        delay = self.reaction_s + (self._rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0)
        at = now + max(0.0, delay)
        if self._pending:
            at = max(at, self._pending[-1][0])  # in the order the cues came
        self._pending.append((at, intent, cue, now))

    # -- playing ---------------------------------------------------------------------------------

    def _switch(self, intent: str, cue: dict | None, arrival: float, planned: float, stamp: float) -> None:
        """Play ``intent`` from the sample stamped ``stamp`` on (the first at or after ``planned``)."""
        if intent in LABELS:
            k = LABELS.index(intent)
            cursor = self._cursor[k]
            if cursor[1]:  # a new movement starts at the onset of the next run
                cursor[0], cursor[1] = (cursor[0] + 1) % len(self.runs[k]), 0
            row = int(self.runs[k][cursor[0]][0])
        else:
            row = self._row
        self._playing = intent
        self._emit(
            "intent",
            intent=intent,
            cue=None if cue is None else cue.get("cue"),
            cue_index=None if cue is None else cue.get("index"),
            t=arrival,
            delay=planned - arrival,
            at=stamp,
            row=row,
        )

    def _play(self, m: int) -> np.ndarray:
        """The next ``m`` rows of what is played now."""
        if self._playing == RECORDING:
            rows = (self._row + np.arange(m)) % len(self.emg)
            self._row = int(rows[-1]) + 1
            return self.emg[rows]
        k = LABELS.index(self._playing)
        runs, cursor = self.runs[k], self._cursor[k]
        parts = []
        while m > 0:
            start, end = (int(x) for x in runs[cursor[0]])
            take = min(m, end - start - cursor[1])
            parts.append(self.emg[start + cursor[1] : start + cursor[1] + take])
            m -= take
            cursor[1] += take
            if cursor[1] >= end - start:  # the run ends: continue into the next one
                cursor[0], cursor[1] = (cursor[0] + 1) % len(runs), 0
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _samples(self, stamps: np.ndarray) -> np.ndarray:
        """The rows for the samples stamped ``stamps``, switching where a followed cue takes effect."""
        out = np.empty((len(stamps), self.emg.shape[1]), dtype=np.float32)
        i = 0
        while i < len(stamps):
            while self._pending and self._pending[0][0] <= stamps[i]:
                planned, intent, cue, arrival = self._pending.pop(0)
                self._switch(intent, cue, arrival, planned, float(stamps[i]))
            j = len(stamps) if not self._pending else int(np.searchsorted(stamps, self._pending[0][0]))
            out[i:j] = self._play(j - i)
            i = j
        return out

    def _emit(self, event: str, **fields: object) -> None:
        record = {"event": event, **fields}
        self.events.append(record)
        if self._log is not None:
            self._log.write(json.dumps(record) + "\n")
            self._log.flush()

    def _run(self) -> None:
        keep_time_as_hardware()  # this thread only
        clock = self._pylsl.local_clock
        t0 = self.t0 = clock()
        self._emit(
            "start",
            name=self.name,
            rate=self.rate,
            samples=len(self.emg),
            idle=self.idle,
            endpoints=self.endpoints,
            t0=t0,
        )
        self._switch(self.idle, None, t0, t0, t0)
        sent = 0
        while not self._stop.is_set():
            now = clock()
            self._listen(now)
            due = int((now - t0) * self.rate) + 1 - sent
            if due > 0:
                stamps = t0 + (sent + np.arange(due)) / self.rate
                self.outlet.push_chunk(self._samples(stamps), stamps.tolist())
                sent += due
                self.pushed = sent
            self._stop.wait(CHUNK_S)
        self._emit("end", samples=sent)


def monitor_endpoint(config: str | None) -> str:
    """The daemon's monitor endpoint as the daemon resolves it: its configuration (``config``,
    else the service's: $MYHAND_CONFIG or /etc/myhand/controller.yaml), else the defaults."""
    from controller.__main__ import load_config

    return load_config(argparse.Namespace(config=config), service_default=True).monitor_endpoint()


DEFAULT_MONITOR = "daemon"  # --monitor without an endpoint: the daemon's own


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="metaemg-patient",
        description="a simulated patient: an LSL armband playing a labelled recording that follows the "
        "calibration's cues (real EMG of each cued intent after a reaction time) and, when no "
        "calibration runs, plays the recording in order",
    )
    p.add_argument(
        "source",
        nargs="?",
        default="myo:Male13/Test0",
        help="recording.csv | myo:SUBJECT/SESSION | myhand:SUBJECT/SESSION | synth[:SEED] (default myo:Male13/Test0)",
    )
    p.add_argument(
        "--myo-root",
        type=Path,
        metavar="DIR",
        help="Myo dataset (default $METAEMG_MYO_ROOT or ../shared/datasets/myoarmband)",
    )
    p.add_argument(
        "--lsl-stream",
        default=DEFAULT_STREAM_NAME,
        metavar="NAME",
        help=f"LSL stream name (default {DEFAULT_STREAM_NAME})",
    )
    p.add_argument("--lsl-source-id", metavar="ID", help="LSL source id")
    renamed(p, "--name", "--lsl-stream")
    renamed(p, "--source-id", "--lsl-source-id")
    p.add_argument(
        "--monitor",
        nargs="?",
        const=DEFAULT_MONITOR,
        metavar="ENDPOINT",
        help="follow the cues the daemon republishes on its monitor stream (default, without --cues: "
        "the daemon's monitor endpoint as it resolves it from its configuration, see --config)",
    )
    p.add_argument(
        "--cues",
        metavar="ENDPOINT",
        help="follow the calibration tool's own cue socket (its cues.endpoint, when it publishes one)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the daemon's configuration file, for its monitor endpoint (default: $MYHAND_CONFIG, else "
        "/etc/myhand/controller.yaml when it exists, else the built-in defaults)",
    )
    p.add_argument(
        "--reaction-s",
        type=float,
        default=DEFAULT_REACTION_S,
        metavar="S",
        help=f"reaction time to a cue, seconds (default {DEFAULT_REACTION_S:g})",
    )
    p.add_argument(
        "--jitter-s",
        type=float,
        default=DEFAULT_JITTER_S,
        metavar="S",
        help=f"uniform random jitter of the reaction time, +- seconds (default {DEFAULT_JITTER_S:g})",
    )
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the jitter (default 0)")
    p.add_argument(
        "--idle",
        choices=IDLE_MODES,
        default=RECORDING,
        help="what to play when no calibration runs: the recording in order, looping (default), or relax",
    )
    p.add_argument("--log", metavar="FILE", help="JSON-lines log of every change of what is played ('-': stdout)")
    p.add_argument("--duration", type=float, metavar="S", help="stop after this many seconds")
    return p


@entry_point
def main(argv: list[str] | None = None) -> int:
    from rig.replay import load_source

    args = _parser().parse_args(argv)
    if args.duration is not None and args.duration < 0:
        raise ConfigError("--duration must not be negative")
    endpoints = []
    if args.monitor is not None or args.cues is None:
        endpoints.append(monitor_endpoint(args.config) if args.monitor in (None, DEFAULT_MONITOR) else args.monitor)
    if args.cues is not None:
        endpoints.append(args.cues)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # before anything runs: stopped in order
    rec = load_source(args.source, args.myo_root, move_s=PATIENT_MOVE_S)
    to_stdout = args.log == "-"
    say = sys.stderr if to_stdout else sys.stdout
    log: IO[str] | None = None
    if to_stdout:
        log = sys.stdout
    elif args.log:
        try:
            log = open(args.log, "w", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise ConfigError(f"--log {args.log}: cannot write: {exc.strerror}") from None
    try:
        patient = Patient(
            rec,
            name=args.lsl_stream,
            endpoints=endpoints,
            reaction_s=args.reaction_s,
            jitter_s=args.jitter_s,
            seed=args.seed,
            idle=args.idle,
            source_id=args.lsl_source_id,
            log=log,
        )
        print(
            f"streaming {args.lsl_stream!r}: {args.source}, {patient.emg.shape[1]} channels at {patient.rate:g} Hz; "
            f"following the cues on {', '.join(endpoints)}; idle: "
            f"{'the recording in order' if args.idle == RECORDING else 'relax'}",
            file=say,
            flush=True,
        )
        patient.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while patient.running and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.1)
        finally:
            patient.stop()
    finally:
        if log is not None and not to_stdout:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
