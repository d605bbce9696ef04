"""A replay armband: an LSL outlet playing a labelled recording in real time (``metaemg-replay``).

Sources: a research-format CSV recording (``path.csv``), a session of the Myo armband dataset
(``myo:SUBJECT/SESSION``, e.g. ``myo:Male13/Test0``, read straight from the dataset), the same
session rendered as the MyHand armband reports it (``myhand:SUBJECT/SESSION``: ~100 Hz envelopes
0..1000, :func:`metalearn.myhand.render_myhand`, seed 0), or a synthetic Myo-style patient
(``synth`` or ``synth:SEED``).

Sample ``i`` is pushed at ``t0 + i / (rate * speed)`` with that time as its LSL timestamp (with
``data_time``, a soak's option, ``t0 + i / rate``: the recording's own time)
(``pylsl.local_clock()``, the same clock as ``time.monotonic()`` on Linux), one sample per push,
as an armband driver does. ``--log FILE.jsonl`` records when playback started and every label
change with the LSL time of its first sample, so decisions can be scored against the labels.

:class:`Replay` is also the test harness: it runs in a thread and can pause (stop sending:
stale input), inject NaN or saturated samples, and stop (the outlet disappears).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO

import numpy as np

from metaemg.cli import entry_point, renamed
from metaemg.errors import DataError
from metaemg.intents import INTENTS
from metaemg.lsl import DEFAULT_STREAM_NAME
from metalearn.myo import default_myo_root
from rig.processes import keep_time_as_hardware


def load_source(spec: str, myo_root: Path | None = None, move_s: float = 0.0):
    """A :class:`metalearn.recording.Recording` from ``spec`` (see the module docstring); a Myo
    session with ``move_s``: followed by that many seconds of its wrist movements, labelled
    ``move`` (:func:`metalearn.myo.build_recording`)."""
    if spec.startswith("myhand:"):
        from metalearn.myhand import render_myhand

        return render_myhand(load_source("myo:" + spec[len("myhand:") :], myo_root, move_s), seed=0)
    if spec.startswith("myo:"):
        from metalearn.myo import build_recording, find_sessions

        root = myo_root or default_myo_root()
        if not root.is_dir():
            raise DataError("Myo armband dataset not found (give --myo-root or set METAEMG_MYO_ROOT)", path=root)
        want = spec[len("myo:") :]
        sessions = {f"{s.subject}/{s.name}": s for s in find_sessions(root)}
        if want not in sessions:
            raise DataError(f"no session {want!r} (e.g. {', '.join(sorted(sessions)[:3])}, ...)", path=root)
        return build_recording(sessions[want], move_s)
    if spec == "synth" or spec.startswith("synth:"):
        from metalearn.synth import condition_names, make_patient, synth_recording

        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return synth_recording(make_patient(seed, 0), condition_names(1)[0], seed=seed)[0]
    from metalearn.recording import read_recording

    return read_recording(spec)


class Replay:
    """Plays ``emg`` (n, channels) at ``rate`` Hz into a new LSL outlet, in a thread."""

    def __init__(
        self,
        emg: np.ndarray,
        labels: np.ndarray | None,
        rate: float,
        *,
        name: str = DEFAULT_STREAM_NAME,
        stream_type: str = "EMG",
        source_id: str | None = None,
        nominal_rate: float | None = None,
        speed: float = 1.0,
        data_time: bool = False,
        loop: bool = False,
        log: IO[str] | None = None,
    ) -> None:
        import pylsl

        from metaemg.lsl import quiet_liblsl

        quiet_liblsl(pylsl)
        self._pylsl = pylsl
        self.emg = np.ascontiguousarray(emg, dtype=np.float32)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.rate = float(rate)
        self.speed = float(speed)
        self.data_time = data_time  # LSL timestamps in the recording's time (a soak faster than real time)
        self.loop = loop
        self.name = name
        channels = self.emg.shape[1]
        info = pylsl.StreamInfo(
            name,
            stream_type,
            channels,
            float(nominal_rate or rate),
            pylsl.cf_float32,
            source_id or f"metaemg-replay-{name}-{os.getpid()}",
        )
        info.desc().append_child_value("manufacturer", "MetaEMG replay")
        self.outlet = pylsl.StreamOutlet(info, chunk_size=1, max_buffered=2)
        self._log = log
        self._stop = threading.Event()
        self._pause = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)
        self._override: tuple[str, int] | None = None
        self._lock = threading.Lock()
        self.pushed = 0
        self.last_push: float | None = None  # local_clock of the last sample pushed
        self.t0: float | None = None
        self.label_changes: list[tuple[float, int]] = []  # (LSL time, label)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> Replay:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait_for_consumer(self, timeout: float) -> bool:
        return self.outlet.wait_for_consumers(timeout)

    def pause(self) -> float | None:
        """Stop sending (the armband goes quiet); returns the LSL time of the last sample sent."""
        self._pause.set()
        with self._lock:  # a push in progress finishes first
            return self.last_push

    def resume(self) -> None:
        self._pause.clear()

    def inject(self, kind: str, samples: int) -> None:
        """Replace the next ``samples`` samples with NaN (``"nan"``) or a rail value (``"saturate"``)."""
        if kind not in ("nan", "saturate"):
            raise ValueError(f"unknown injection {kind!r}")
        self._override = (kind, samples)

    def stop(self) -> None:
        self._stop.set()
        self._pause.clear()
        self._thread.join(2.0)

    def close(self) -> None:
        """Stop and destroy the outlet (the stream disappears)."""
        self.stop()
        del self.outlet

    def label_at(self, t: float) -> int | None:
        """The recording's label at LSL time ``t`` (None before the start or without labels)."""
        if self.labels is None or not self.label_changes or t < self.label_changes[0][0]:
            return None
        i = int(np.searchsorted([c[0] for c in self.label_changes], t, side="right")) - 1
        return self.label_changes[i][1]

    # -- thread ----------------------------------------------------------------------------------

    def _emit(self, event: str, **fields: object) -> None:
        if self._log is not None:
            self._log.write(json.dumps({"t": self._pylsl.local_clock(), "event": event, **fields}) + "\n")
            self._log.flush()

    def _run(self) -> None:
        keep_time_as_hardware()  # this thread only
        clock = self._pylsl.local_clock
        period = 1.0 / (self.rate * self.speed)
        n = len(self.emg)
        i = 0
        t0 = self.t0 = clock()
        self._emit("start", name=self.name, rate=self.rate, speed=self.speed, samples=n, t0=t0)
        last_label = None
        saturate = np.full(self.emg.shape[1], 127.0, dtype=np.float32)
        nan = np.full(self.emg.shape[1], np.nan, dtype=np.float32)
        while not self._stop.is_set():
            if self._pause.is_set():
                self._pause_wait()
                # continue the recording where it stopped, from now on
                t0 = clock() - i * period
                continue
            due = t0 + i * period
            wait = due - clock()
            if wait > 0:
                time.sleep(min(wait, 0.05))
                continue
            row = self.emg[i % n]
            if self._override is not None:
                kind, left = self._override
                row = nan if kind == "nan" else saturate
                self._override = (kind, left - 1) if left > 1 else None
            with self._lock:
                if self._pause.is_set() or self._stop.is_set():
                    continue
                # faster than real time, the samples' own timestamps keep the recording's rate
                # (the daemon measures the rate from them and refuses a stream that is off)
                self.outlet.push_sample(row, t0 + i / self.rate if self.data_time else due)
                self.last_push = due
            self.pushed += 1
            if self.labels is not None:
                label = int(self.labels[i % n])
                if label != last_label:
                    last_label = label
                    self.label_changes.append((due, label))
                    self._emit("label", index=i, label=INTENTS[label] if 0 <= label < 3 else label, lsl_t=due)
            i += 1
            if i % n == 0 and not self.loop:
                break
        self._emit("end", samples=self.pushed)

    def _pause_wait(self) -> None:
        self._emit("pause", lsl_t=self.last_push)
        while self._pause.is_set() and not self._stop.is_set():
            time.sleep(0.005)
        if not self._stop.is_set():
            self._emit("resume")


@entry_point
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="metaemg-replay", description="play a labelled EMG recording into LSL in real time"
    )
    p.add_argument(
        "source",
        nargs="?",
        default="myo:Male13/Test0",
        help="recording.csv | myo:SUBJECT/SESSION | myhand:SUBJECT/SESSION | synth[:SEED] (default myo:Male13/Test0)",
    )
    p.add_argument(
        "--myo-root", type=Path, help="Myo dataset (default $METAEMG_MYO_ROOT or ../shared/datasets/myoarmband)"
    )
    p.add_argument("--lsl-stream", default=DEFAULT_STREAM_NAME, metavar="NAME", help="LSL stream name")
    renamed(p, "--name", "--lsl-stream")
    p.add_argument("--type", default="EMG", help="LSL stream type")
    p.add_argument("--lsl-source-id", metavar="ID", help="LSL source id")
    renamed(p, "--source-id", "--lsl-source-id")
    p.add_argument("--rate", type=float, help="announce this nominal rate instead of the recording's")
    p.add_argument("--speed", type=float, default=1.0, help="playback speed factor")
    p.add_argument("--start-s", type=float, default=0.0, help="start this far into the recording")
    p.add_argument("--loop", action="store_true", help="start again at the end")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--log", type=Path, help="JSON-lines log of the start and of every label change")
    args = p.parse_args(argv)
    rec = load_source(args.source, args.myo_root)
    rate = rec.sample_rate
    start = int(args.start_s * rate)
    log = open(args.log, "w", encoding="utf-8") if args.log else None  # noqa: SIM115 - closed below
    try:
        replay = Replay(
            rec.emg[start:],
            rec.labels[start:],
            rate,
            name=args.lsl_stream,
            stream_type=args.type,
            source_id=args.lsl_source_id,
            nominal_rate=args.rate,
            speed=args.speed,
            loop=args.loop,
            log=log,
        )
        print(f"streaming {args.lsl_stream!r}: {args.source}, {rec.emg.shape[1]} channels at {rate:g} Hz", flush=True)
        replay.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while replay.running and not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                stop.wait(0.1)
        finally:
            replay.close()
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
