"""Record a calibration clip live: the armband over LSL, the patient guided by cues.

:class:`LiveRecorder` resolves the armband's stream and checks it against the model (channels,
nominal rate) before the patient is asked to do anything; then it runs a countdown and the cue
protocol, printing each cue with a countdown of its seconds and publishing it through
:class:`~.daemonlink.DaemonLink`, while it pulls samples. Sample times are LSL times (clock
synchronised, de-jittered) on the same clock as the cues (``pylsl.local_clock``). The clip
starts when the first cue is shown and ends with the final relax; each sample is labelled with
the cue shown ``reaction_s`` earlier (:func:`.protocol.labels_from_cues`), using the times the
cues were actually shown.

If the armband stops sending for ``stall_timeout_s``, recording stops with a DataError. Whatever
was recorded so far stays available from :meth:`LiveRecorder.partial`, so the caller can save it.
"""

from __future__ import annotations

import math
import sys
from typing import IO, Any

import numpy as np

from calibration.config import LslSection
from calibration.daemonlink import DaemonLink
from calibration.protocol import INSTRUCTIONS, CueProtocol, labels_from_cues
from metaemg.errors import DataError
from metaemg.lsl import StreamDesc, choose, describe, gather, quiet_liblsl
from metaemg.signal import SignalSpec, rate_matches
from metalearn.recording import Recording

POLL_S = 0.02  # longest wait for samples between two checks of the clock (cue display latency)
DRAIN_S = 0.5  # after the last cue: how long to wait for the samples recorded before its end


def find_stream(lsl: LslSection, bound: tuple[str, str] | None = None):
    """``(pylsl StreamInfo, StreamDesc)`` of the armband's stream: the one armband matching ``lsl``,
    or, with ``bound`` (the :func:`~metaemg.lsl.identity` of the armband a running daemon reads),
    exactly that one. One-line DataError naming every candidate otherwise."""
    import pylsl

    quiet_liblsl(pylsl)
    predicate = lsl.predicate()
    found = pylsl.resolve_bypred(predicate, 1, lsl.resolve_timeout_s)
    if not found:
        raise DataError(
            f"no LSL stream matching {predicate} within {lsl.resolve_timeout_s:g} s: is the "
            "armband on, paired and streaming?"
        )
    infos = gather(pylsl, predicate, found)
    descs = [describe(info) for info in infos]
    index, kind, candidates = choose(descs, bound)
    if index is not None:
        return infos[index], descs[index]
    if kind == "foreign":
        assert bound is not None  # choose() says foreign only when bound
        raise DataError(
            f"the controller reads the armband with source id {bound[0]!r} on {bound[1]!r}, which does not "
            f"stream now (found: {'; '.join(candidates)}): nothing is recorded; check that armband, or if it was "
            "replaced run: myhand-controller ctl rebind"
        )
    raise DataError(
        f"{len(candidates)} armbands match {predicate} ({'; '.join(candidates)}): none is recorded; switch one "
        "off, or choose one with lsl.source_id (--lsl-source-id ID)"
    )


class LiveRecorder:
    def __init__(
        self,
        protocol: CueProtocol,
        lsl: LslSection,
        spec: SignalSpec,
        link: DaemonLink,
        out: IO[str] | None = None,
        bound: tuple[str, str] | None = None,
    ):
        import pylsl

        self._lsl = pylsl
        self.clock = pylsl.local_clock
        self.protocol = protocol
        self.lsl = lsl
        self.spec = spec
        self.link = link
        self.bound = bound  # the identity of the armband the controller reads: only that one is recorded
        self.out = out or sys.stdout
        self.inlet: Any = None  # a pylsl.StreamInlet once connected (pylsl is imported lazily)
        self.stream: StreamDesc | None = None
        self._chunks: list[np.ndarray] = []
        self._stamps: list[np.ndarray] = []
        self._last_data = 0.0
        self.cue_times: list[tuple[float, int]] = []  # (local_clock when shown, label)
        self.t_start: float | None = None
        self.t_end: float | None = None
        self.phase = "connecting"

    # -- output ----------------------------------------------------------------------------------
    def say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    # -- stream ----------------------------------------------------------------------------------
    def connect(self) -> StreamDesc:
        """Find the armband's stream, check it against the model, open it."""
        pylsl = self._lsl
        info, desc = find_stream(self.lsl, self.bound)
        if desc.channels != self.spec.channels:
            raise DataError(
                f"stream {desc.describe()} has {desc.channels} channels; the model expects {self.spec.channels}"
            )
        if desc.rate > 0 and not rate_matches(desc.rate, self.spec.sample_rate):
            raise DataError(
                f"stream {desc.describe()} runs at {desc.rate:g} Hz; the model expects {self.spec.sample_rate:g} Hz"
            )
        flags = pylsl.proc_clocksync | pylsl.proc_monotonize | (pylsl.proc_dejitter if desc.rate > 0 else 0)
        self.inlet = pylsl.StreamInlet(info, max_buflen=10, recover=False, processing_flags=flags)
        try:
            self.inlet.open_stream(timeout=self.lsl.resolve_timeout_s)
        except (pylsl.util.TimeoutError, pylsl.util.LostError) as exc:
            raise DataError(f"cannot open stream {desc.describe()}: {exc}") from None
        self.stream = desc
        self._last_data = self.clock()
        return desc

    def close(self) -> None:
        if self.inlet is not None:
            self.inlet.close_stream()
            self.inlet = None

    def _pump_until(self, deadline: float) -> None:
        """Pull samples until ``deadline`` (local clock); DataError if the armband goes quiet."""
        pylsl = self._lsl
        stream = self.stream
        assert stream is not None, "connect() first"
        while True:
            now = self.clock()
            if now >= deadline:
                return
            try:
                data, stamps = self.inlet.pull_chunk(
                    timeout=min(POLL_S, deadline - now), max_samples=1024, min_samples=1, as_numpy=True
                )
            except pylsl.util.LostError:
                raise DataError(f"the armband's stream {stream.describe()} was lost {self._when()}") from None
            now = self.clock()
            if len(stamps):
                chunk = np.asarray(data, dtype=np.float64).reshape(len(stamps), -1)
                stamps = np.asarray(stamps, dtype=np.float64)
                bad = ~np.isfinite(chunk)
                if bad.any():  # stop now, keeping what came before it (the caller saves it)
                    row, col = (int(v) for v in np.argwhere(bad)[0])
                    self._chunks.append(chunk[:row])
                    self._stamps.append(stamps[:row])
                    value = "NaN" if np.isnan(chunk[row, col]) else "an infinite value"
                    raise DataError(
                        f"the armband sent {value} on emg{col} {self._when()}: the recording stops; "
                        "check the armband and calibrate again"
                    )
                self._chunks.append(chunk)
                self._stamps.append(stamps)
                self._last_data = now
            elif now - self._last_data > self.lsl.stall_timeout_s:
                raise DataError(
                    f"the armband stopped sending ({now - self._last_data:.1f} s without a sample) "
                    f"{self._when()}; check it and calibrate again"
                )

    def _when(self) -> str:
        if self.t_start is None:
            return "before the first cue"
        return f"{self.clock() - self.t_start:.1f} s into the protocol"

    # -- protocol --------------------------------------------------------------------------------
    def run(self) -> Recording:
        """Countdown, cues, and the clip (labels from the cues actually shown)."""
        if self.inlet is None:
            self.connect()
        p = self.protocol
        cues = p.cues()
        n = len(cues)
        common = {"n_cues": n, "cycles": p.cycles}
        self.phase = "countdown"
        self.say(f"Calibration: {p.describe()}.")
        self.say(
            "Follow the prompts: RELAX = let the hand rest, OPEN = open the hand, CLOSE = close the hand"
            + (", MOVE = move the wrist freely with the hand relaxed." if p.move_s else ".")
        )
        t_begin = self.clock()
        if p.countdown_s:
            self.say("Starting in", end="")
        for k in range(p.countdown_s, 0, -1):
            self._pump_until(t_begin + (p.countdown_s - k))
            self.link.publish_cue("countdown", -1, k, cycle=0, total_remaining_s=k + p.duration_s, **common)
            self.say(f" {k}", end="")
        self._pump_until(t_begin + p.countdown_s)
        if p.countdown_s:
            self.say()
        self.phase = "cues"
        t0 = self.t_start = self.clock()
        for cue in cues:
            self._pump_until(t0 + cue.start)
            shown = self.clock()
            self.cue_times.append((shown, cue.label))
            fields = {"cycle": cue.cycle, **common}
            self.link.publish_cue(
                cue.name, cue.index, cue.duration, total_remaining_s=p.duration_s - cue.start, **fields
            )
            self.say(f"[{cue.index + 1:>2}/{n}] {cue.name.upper():<5}  {INSTRUCTIONS[cue.name]:<36}", end="")
            whole = math.ceil(cue.duration - 1e-9)
            for s in range(whole):
                remaining = cue.duration - s
                self._pump_until(t0 + cue.start + s)
                if s:
                    self.link.publish_cue(
                        cue.name, cue.index, remaining, total_remaining_s=p.duration_s - cue.start - s, **fields
                    )
                self.say(f" {math.ceil(remaining - 1e-9)}", end="")
            self.say()
        t_end = self.t_end = t0 + p.duration_s
        self._pump_until(t_end)
        self.link.publish_cue("done", n, 0.0, cycle=p.cycles, total_remaining_s=0.0, **common)
        self.phase = "done"
        self.say("Done: the patient can relax.")
        drain_until = self.clock() + DRAIN_S
        while self.clock() < drain_until and not (self._stamps and self._stamps[-1][-1] >= t_end):
            self._pump_until(min(drain_until, self.clock() + POLL_S))
        rec = self._clip(t_end)
        if rec is None:
            assert self.stream is not None  # connected at the start of run()
            raise DataError(f"no EMG samples arrived from {self.stream.describe()} during the protocol")
        return rec

    def abort(self) -> None:
        """Tell the GUI the protocol stopped (after an error or Ctrl-C)."""
        if self.phase in ("countdown", "cues"):
            self.link.publish_cue("aborted", -1, 0.0, cycle=0, total_remaining_s=0.0)
            self.phase = "aborted"

    def partial(self) -> Recording | None:
        """What was recorded since the first cue (None if too little to save)."""
        if self.t_start is None:
            return None
        return self._clip(self.t_end if self.t_end is not None else math.inf)

    def _clip(self, t_end: float) -> Recording | None:
        if not self._stamps or self.t_start is None:
            return None
        stamps = np.concatenate(self._stamps)
        emg = np.concatenate(self._chunks)
        keep = (stamps >= self.t_start) & (stamps < t_end)
        stamps, emg = stamps[keep], emg[keep]
        if len(stamps) < 2:
            return None
        stamps = np.maximum.accumulate(stamps)  # proc_monotonize already guarantees it
        times = np.array([t for t, _ in self.cue_times])
        labels = labels_from_cues(stamps, times, np.array([lab for _, lab in self.cue_times]), self.protocol.reaction_s)
        return Recording(stamps - self.t_start, emg, labels)
