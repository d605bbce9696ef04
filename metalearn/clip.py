"""A calibration clip -> checked, conditioned windows, cut into its relax-open-relax-close cycles.

The whole clip runs through a fresh :class:`~metaemg.signal.SignalChain` of the model's spec, as
one stream (what the daemon would compute), then :func:`~metaemg.signal.make_windows`; each
window is labelled by its last sample and belongs to the cycle its last sample lies in. A cycle
starts at the relax before its open or close (whichever comes first); the first cycle starts at
the clip's first sample and the last one runs to its end, so each holds all three intents.

The gate cross-validates (:meth:`ClipWindows.folds`): over the cycles when there are two or more
(each cycle scored by a model adapted on the others), and, for a clip of one cycle (the research
protocol's support: relax, open, relax, close, relax), over the halves of its runs (the first half
of every run scored by a model adapted on the second halves, and the other way round; a window
that spans both halves is neither adapted on nor scored). The model that is installed is adapted
on every window.

The windows of a movement segment (label :data:`~metaemg.intents.MOVE`: the wearer moves the
wrist freely with the hand relaxed) are kept apart (:attr:`ClipWindows.move_windows`): the
intents' windows, folds and scaler never include them; the calibration learns them as the
wearer's own non-intent classes and scores them as "must not move the hand".

Refused with a one-line :class:`~metaemg.errors.DataError` (no model is made): a wrong channel
count or sample rate, a flat channel (no contact, armband off), a saturated clip, an intent
that is missing, no cycle of open and close, or too little of an intent in a cycle.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from metaemg.errors import DataError
from metaemg.intents import MOVE
from metaemg.signal import SignalChain, SignalSpec, make_windows, rate_matches
from metaemg.typedconfig import Section, require_range
from metalearn.metrics import INTENTS, steady_windows
from metalearn.recording import Recording

FLAT_FRACTION = 1e-3  # of the input range: a channel that moves less than this is flat


@dataclass(frozen=True)
class ClipRules(Section):
    """What makes a clip usable (the ``clip`` section of the calibration configuration)."""

    KEY = "clip"
    min_intent_s: float = 0.5  # of each intent, in each cycle
    max_saturated: float = 0.2  # fraction of samples at the armband's range limits

    def check(self, key: str) -> None:
        for attr, hi in (("min_intent_s", 30.0), ("max_saturated", 1.0)):
            value = getattr(self, attr)
            require_range(value, f"{key}.{attr}", 0, hi)


@dataclass(frozen=True, eq=False)
class ClipWindows:
    spec: SignalSpec
    recording: Recording
    conditioned: np.ndarray  # (n, channels): the clip through the signal chain
    windows: np.ndarray  # (k, window, channels) float32, conditioned, unscaled
    ends: np.ndarray  # (k,) sample index of each window's last sample
    labels: np.ndarray  # (k,) label of each window's last sample
    cycle_starts: tuple[int, ...]  # first sample of each cycle (the first is 0)
    saturated_fraction: float
    move_windows: np.ndarray  # (m, window, channels) the movement segment's windows, all its own samples (m may be 0)
    move_ends: np.ndarray  # (m,)

    @property
    def intent_samples(self) -> np.ndarray:
        """(n,) True for the samples of the intents' cues (not the movement segment)."""
        return self.recording.labels != MOVE

    def move_folds(self):
        """The movement segment's cross-validation: for each block of its windows (their last
        samples within one window length), ``(learn mask, held-out mask)`` over
        :attr:`move_windows`, the windows learned from sharing no sample with the held-out ones."""
        ends, w = self.move_ends, self.spec.window
        blocks = (ends - ends[0]) // w if len(ends) else ends
        for b in np.unique(blocks):
            held = blocks == b
            lo, hi = ends[held].min(), ends[held].max()
            yield (ends <= lo - w) | (ends >= hi + w), held

    @property
    def n_cycles(self) -> int:
        return len(self.cycle_starts)

    @property
    def cycles(self) -> np.ndarray:
        """(k,) the cycle of each window (of its last sample)."""
        return np.searchsorted(np.asarray(self.cycle_starts), self.ends, side="right") - 1

    def cycle_samples(self, k: int) -> slice:
        """The samples of cycle ``k``."""
        stop = self.cycle_starts[k + 1] if k + 1 < self.n_cycles else len(self.conditioned)
        return slice(self.cycle_starts[k], stop)

    def folds(self):
        """For each fold ``k``: ``(k, train windows mask, held-out windows mask, train samples mask)``:
        one fold per cycle, or, for one cycle, the two halves of its runs (module docstring)."""
        if self.n_cycles >= 2:
            cycles = self.cycles
            for k in range(self.n_cycles):
                samples = self.intent_samples.copy()
                samples[self.cycle_samples(k)] = False
                yield k, cycles != k, cycles == k, samples
            return
        half = self.run_halves()
        ones = np.concatenate([[0], np.cumsum(half)])  # samples of the second halves before each index
        count = ones[self.ends + 1] - ones[self.ends + 1 - self.spec.window]
        pure = {0: count == 0, 1: count == self.spec.window}  # windows inside one half
        for k in (0, 1):
            yield k, pure[1 - k], pure[k], (half == 1 - k) & self.intent_samples

    @property
    def scored(self) -> np.ndarray:
        """(k,) the windows the cross-validation scores (each in exactly one held-out fold)."""
        mask = np.zeros(len(self.ends), dtype=bool)
        for _, _, held, _ in self.folds():
            mask |= held
        return mask

    def run_halves(self) -> np.ndarray:
        """(n,) 0 for the samples in the first half of their run of equal labels, 1 in the second."""
        labels = self.recording.labels
        edges = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1, [len(labels)]])
        half = np.zeros(len(labels), dtype=np.int64)
        for a, b in itertools.pairwise(edges):
            half[(a + b) // 2 : b] = 1
        return half

    def holdout(self) -> str:
        """How the gate's estimate is made, in words."""
        if self.n_cycles >= 2:
            return f"cross-validation over {self.n_cycles} cycles"
        return "cross-validation over the halves of the clip's one cycle"

    def cycle_times(self) -> list[float]:
        """Start of each cycle, seconds from the clip's start."""
        t = self.recording.time
        return [float(t[i] - t[0]) for i in self.cycle_starts]

    def activity(self) -> dict[str, float]:
        """Mean conditioned level per intent relative to relax (about 1: no contraction seen)."""
        lab = self.recording.labels
        level = {name: float(np.abs(self.conditioned[lab == i]).mean()) for i, name in enumerate(INTENTS)}
        base = level["relax"] or 1e-12
        return {name: round(v / base, 3) for name, v in level.items()}


def cycle_starts(labels: np.ndarray, path: object | None = None) -> tuple[int, ...]:
    """First sample of each relax-open-relax-close cycle: 0, then for every later cycle the relax
    before its open or close (whichever comes first), or that open/close itself when no relax
    precedes it. A cycle is counted for each pair of an open run and a close run."""
    labels = np.asarray(labels, dtype=np.int64)
    starts = np.concatenate([[0], np.flatnonzero(np.diff(labels)) + 1])
    run_labels = labels[starts]
    for k, name in enumerate(INTENTS):
        if not (labels == k).any():
            seen = ", ".join(n for i, n in enumerate(INTENTS) if (labels == i).any())
            raise DataError(
                f"the clip has no '{name}' (intents seen: {seen}); it needs relax, open and close", path=path
            )
    opens, closes = np.flatnonzero(run_labels == 1), np.flatnonzero(run_labels == 2)
    cycles = min(len(opens), len(closes))
    if cycles < 1:
        raise DataError("the clip has no cycle of open and close; calibration needs at least 1", path=path)
    out = [0]
    for c in range(1, cycles):
        first = int(min(opens[c], closes[c]))
        if first > 0 and run_labels[first - 1] == 0:
            first -= 1
        out.append(int(starts[first]))
    return tuple(out)


def prepare_clip(rec: Recording, spec: SignalSpec, rules: ClipRules = ClipRules()) -> ClipWindows:
    """Check the clip, condition and window it, and split it (see the module docstring)."""
    path = rec.path
    if rec.n_channels != spec.channels:
        raise DataError(f"the clip has {rec.n_channels} EMG channels, the model expects {spec.channels}", path=path)
    rate = rec.sample_rate
    if not rate_matches(rate, spec.sample_rate):
        raise DataError(
            f"the clip's sample rate is {rate:.1f} Hz, the model expects {spec.sample_rate:g} Hz", path=path
        )
    _check_flat(rec, spec)
    chain = SignalChain(spec)
    saturated = float(chain.saturated(rec.emg).mean()) if spec.input_range is not None else 0.0
    if saturated > rules.max_saturated:
        raise DataError(
            f"the armband saturates in {saturated:.0%} of the clip (limit {rules.max_saturated:.0%}): "
            "check its fit and position, then calibrate again",
            path=path,
        )
    starts = cycle_starts(rec.labels, path)
    conditioned = chain.process(rec.emg)
    windows, ends = make_windows(conditioned, spec.window, spec.stride)
    if len(ends) == 0:
        raise DataError(f"the clip is too short: {rec.duration:.1f} s gives no {spec.window}-sample window", path=path)
    labels = rec.labels[ends]
    moving = labels == MOVE
    pure = moving & steady_windows(rec.labels, ends, spec.window)  # not the cue before it
    move_windows, move_ends = windows[pure].astype(np.float32), ends[pure]
    windows, ends, labels = windows[~moving], ends[~moving], labels[~moving]
    need = max(1, int(np.ceil(rules.min_intent_s * rate / spec.stride)))
    cycles = np.searchsorted(np.asarray(starts), ends, side="right") - 1
    for k in range(len(starts)):
        counts = np.bincount(labels[cycles == k], minlength=len(INTENTS))
        short = [
            f"{INTENTS[i]} {counts[i] * spec.stride / rate:.2f} s" for i in range(len(INTENTS)) if counts[i] < need
        ]
        if short:
            raise DataError(
                f"the clip is too short: its cycle {k + 1} of {len(starts)} has only {', '.join(short)}; each cycle "
                f"needs at least {rules.min_intent_s:g} s of each intent",
                path=path,
            )
    return ClipWindows(
        spec, rec, conditioned, windows.astype(np.float32), ends, labels, starts, saturated, move_windows, move_ends
    )


def _check_flat(rec: Recording, spec: SignalSpec) -> None:
    span = (spec.input_range[1] - spec.input_range[0]) if spec.input_range is not None else 0.0
    tol = FLAT_FRACTION * span if span else 1e-9
    ptp = np.ptp(rec.emg, axis=0)
    flat = [f"emg{i}" for i in np.flatnonzero(ptp <= tol)]
    if len(flat) == rec.n_channels:
        raise DataError(
            "no EMG: every channel is flat (is the armband on, switched on and touching the skin?)", path=rec.path
        )
    if flat:
        raise DataError(
            f"channel(s) {', '.join(flat)} are flat (no signal): check the armband's contact with the skin, "
            "then calibrate again",
            path=rec.path,
        )
